// The engine's ownership rules: sessions bound to their peer and their secret, one session per
// rank in a group, groups destroyed only by their owner.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <future>
#include <limits>
#include <set>
#include <vector>

#include "common/routing_errors.h"
#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/core/engine.h"
#include "daemon/core/session_identity.h"
#include "tests/unit/engine_fixture.h"

namespace epd {
namespace {

using std::chrono::milliseconds;

using engine_testing::Config;

class EngineSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override { Restart(EngineOptions{}); }
  void Restart(EngineOptions options) {
    engine_.reset();
    auto backend = CreateCpuBackend({2, milliseconds(2000)});
    ASSERT_TRUE(backend.ok());
    engine_ = Engine::Create(std::move(backend).value(), options).value();
  }
  SessionId Open(int rank, SessionPeer peer = {}) { return OpenInfo(rank, peer).id; }
  SessionInfo OpenInfo(int rank, SessionPeer peer = {}) {
    return engine_->OpenSession(rank, "test", /*unary=*/false, peer).value();
  }
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineSecurityTest, ASessionIsUsableOnlyByThePeerThatOpenedIt) {
  const SessionPeer alice{100, 1000, 1000};
  const SessionInfo session = OpenInfo(0, alice);
  EXPECT_TRUE(engine_->Touch(session.id, alice, session.secret).ok());
  const SessionPeer other_process{101, 1000, 1000};
  const SessionPeer other_user{100, 1001, 1001};
  // Even with the right secret: the secret alone does not make another process the owner.
  for (const SessionPeer& intruder : {other_process, other_user, SessionPeer{}}) {
    const Status status = engine_->Touch(session.id, intruder, session.secret);
    EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
  }
}

TEST_F(EngineSecurityTest, ASessionIsUsableOnlyWithItsSecret) {
  const SessionPeer alice{100, 1000, 1000};
  const SessionInfo session = OpenInfo(0, alice);
  const SessionInfo other = OpenInfo(0, alice);  // the same process's other session
  ASSERT_NE(session.secret, other.secret);
  const Status right = engine_->Touch(session.id, alice, session.secret);
  EXPECT_TRUE(right.ok()) << right.ToString();
  std::vector<SessionSecret> wrong = {other.secret, 0, ~session.secret};
  for (int bit = 0; bit < 64; ++bit) wrong.push_back(session.secret ^ (uint64_t{1} << bit));
  for (SessionSecret presented : wrong) {
    const Status status = engine_->Touch(session.id, alice, presented);
    EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
  }
  // Which part failed is not told: a wrong secret and a wrong peer read the same.
  const Status wrong_secret = engine_->Touch(session.id, alice, other.secret);
  const Status wrong_peer =
      engine_->Touch(session.id, SessionPeer{101, 1000, 1000}, session.secret);
  EXPECT_EQ(wrong_secret.ToString(), wrong_peer.ToString());
  EXPECT_NE(wrong_secret.message().find(kSessionSecretHeader), std::string::npos)
      << wrong_secret.ToString();
  // An id that is not open is NOT_FOUND (ids are public); closing the session makes it so.
  ASSERT_TRUE(engine_->CloseSession(session.id, "done").ok());
  EXPECT_EQ(engine_->Touch(session.id, alice, session.secret).code(), StatusCode::kNotFound);
}

// A 32-bit seed or a short value would leave bits unset; repeats would mean a weak source.
void ExpectRandom64(const std::function<StatusOr<uint64_t>()>& draw) {
  std::set<uint64_t> values;
  uint64_t seen_ones = 0, seen_zeros = 0;
  for (int i = 0; i < 256; ++i) {
    auto value = draw();
    ASSERT_TRUE(value.ok()) << value.status().ToString();
    values.insert(*value);
    seen_ones |= *value;
    seen_zeros |= ~*value;
  }
  EXPECT_EQ(values.size(), 256u);
  EXPECT_EQ(seen_ones, ~uint64_t{0});
  EXPECT_EQ(seen_zeros, ~uint64_t{0});
}

TEST_F(EngineSecurityTest, SessionIdsAndSecretsDoNotRepeatAndUseAllBits) {
  ExpectRandom64(RandomSessionId);
  ExpectRandom64(RandomSessionSecret);
  // Through the engine: every session gets its own secret, drawn apart from its id.
  ExpectRandom64([this]() -> StatusOr<uint64_t> {
    const SessionInfo info = OpenInfo(0);
    EXPECT_NE(info.secret, info.id);
    return info.secret;
  });
}

TEST_F(EngineSecurityTest, ACredentialNeedsThePeerAndEveryBitOfTheSecret) {
  const SessionSecret secret = 0x0123456789abcdefULL;
  const SessionPeer peer{7, 8, 9};
  EXPECT_TRUE(HoldsSessionCredential(peer, secret, peer, secret));
  for (int bit = 0; bit < 64; ++bit) {
    EXPECT_FALSE(HoldsSessionCredential(peer, secret, peer, secret ^ (uint64_t{1} << bit)))
        << "bit " << bit;
  }
  EXPECT_FALSE(HoldsSessionCredential(peer, secret, SessionPeer{7, 9, 9}, secret));
  EXPECT_FALSE(HoldsSessionCredential(peer, secret, SessionPeer{}, secret));
}

TEST_F(EngineSecurityTest, ASecondSessionOfARankCannotJoinAGroupItsRankHolds) {
  const SessionId honest = Open(0);
  ASSERT_TRUE(engine_->CreateGroup(honest, Config("g"), false).ok());
  ASSERT_TRUE(engine_->CreateHandle(honest, "g", 0, "", false).ok());
  const SessionId thief = Open(0);
  const auto stolen = engine_->CreateHandle(thief, "g", 0, "", false);
  EXPECT_EQ(stolen.status().code(), StatusCode::kPermissionDenied) << stolen.status().ToString();
  // Another rank joins as usual; rank 0 is free again once its holder left.
  EXPECT_TRUE(engine_->CreateHandle(Open(1), "g", 1, "", false).ok());
  ASSERT_TRUE(engine_->CloseSession(honest, "left").ok());
  EXPECT_TRUE(engine_->CreateHandle(thief, "g", 0, "", false).ok());
}

TEST_F(EngineSecurityTest, APersistentHandleOfARankIsAttachedNotDuplicated) {
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config("p"), true).ok());
  ASSERT_TRUE(engine_->CreatePersistentHandle("p", 0, "layer0").ok());
  const SessionId session = Open(0);
  EXPECT_EQ(engine_->CreateHandle(session, "p", 0, "", false).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_TRUE(engine_->AttachHandle(session, "layer0").ok());
}

TEST_F(EngineSecurityTest, OnlyTheOwnerDestroysASessionGroup) {
  const SessionId owner = Open(0);
  const SessionId other = Open(1);
  ASSERT_TRUE(engine_->CreateGroup(owner, Config("mine"), false).ok());
  EXPECT_EQ(engine_->DestroyGroup(other, "mine").code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(engine_->DestroyGroup(owner, "mine").ok());
}

TEST_F(EngineSecurityTest, PersistentGroupsAreDestroyedOnlyByTheirCreatorsUser) {
  const SessionPeer admin{10, 500, 500};
  const SessionPeer stranger{11, 600, 600};
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config("from-config"), true).ok());
  ASSERT_TRUE(engine_->CreateGroup(Open(0, admin), Config("by-admin"), true).ok());
  const SessionId intruder = Open(1, stranger);
  EXPECT_EQ(engine_->DestroyGroup(intruder, "from-config").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->DestroyGroup(intruder, "by-admin").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->DestroyGroup(Open(1, admin), "from-config").code(),
            StatusCode::kPermissionDenied);
  EXPECT_TRUE(engine_->DestroyGroup(Open(1, SessionPeer{12, 500, 500}), "by-admin").ok());
}

::testing::AssertionResult OverLimit(const Status& status, std::string_view key) {
  if (status.code() == StatusCode::kResourceExhausted &&
      status.message().find(key) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected RESOURCE_EXHAUSTED naming " << key
                                       << ", got " << status.ToString();
}

// A frontend-made shm object of `bytes`.
struct Object {
  explicit Object(size_t bytes) : name("/epd-limits-" + std::to_string(getpid()) + "-" +
                                       std::to_string(next++)) {
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    close(fd);
  }
  ~Object() { shm_unlink(name.c_str()); }
  MemorySource Source(uint64_t size) const {
    MemorySource source;
    source.shm_name = name;
    source.size = size;
    return source;
  }
  static inline int next = 0;
  std::string name;
};

TEST_F(EngineSecurityTest, EverySessionLimitAnswersResourceExhaustedNamingItsKey) {
  EngineOptions options;
  options.limits = SessionLimits{2, 12288, 2, 1, 1, 2};
  Restart(options);
  const SessionId session = Open(0);
  // Fences.
  ASSERT_TRUE(engine_->CreateFence(session).ok());
  ASSERT_TRUE(engine_->CreateFence(session).ok());
  EXPECT_TRUE(OverLimit(engine_->CreateFence(session).status(), "limits.fences_per_session"));
  // Buffers and registered bytes.
  Object object(16384);
  ASSERT_TRUE(engine_->RegisterBuffer(session, object.Source(8192)).ok());
  EXPECT_TRUE(OverLimit(engine_->RegisterBuffer(session, object.Source(8192)).status(),
                        "limits.mapped_bytes_per_session"));
  auto second = engine_->RegisterBuffer(session, object.Source(4096));
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(OverLimit(engine_->RegisterBuffer(session, object.Source(1)).status(),
                        "limits.buffers_per_session"));
  ASSERT_TRUE(engine_->ReleaseBuffer(session, second->id).ok());  // frees its share
  EXPECT_TRUE(engine_->RegisterBuffer(session, object.Source(4096)).ok());
  // Groups and handles.
  ASSERT_TRUE(engine_->CreateGroup(session, Config("a"), false).ok());
  EXPECT_TRUE(OverLimit(engine_->CreateGroup(session, Config("b"), false),
                        "limits.groups_per_session"));
  EXPECT_TRUE(engine_->CreateGroup(session, Config("a"), false).ok());  // idempotent: no new one
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config("p1"), true).ok());
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config("p2"), true).ok());
  EXPECT_TRUE(OverLimit(engine_->CreateGroup(std::nullopt, Config("p3"), true),
                        "limits.persistent_groups"));
  ASSERT_TRUE(engine_->CreateHandle(session, "a", 0, "", false).ok());
  EXPECT_TRUE(OverLimit(engine_->CreateHandle(session, "p1", 0, "", false).status(),
                        "limits.handles_per_session"));
  // Another session has its own allowance.
  EXPECT_TRUE(engine_->CreateFence(Open(1)).ok());
}

TEST_F(EngineSecurityTest, ClientAndHandleNamesAreBoundedAndPrintable) {
  auto forged = engine_->OpenSession(0, "ok\n2026-12-01 info [core] forged", false);
  EXPECT_EQ(forged.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(forged.status().message().find("client_name"), std::string::npos);
  auto huge = engine_->OpenSession(0, std::string(1 << 20, 'a'), false);
  EXPECT_EQ(huge.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("client_name has 1048576 bytes"), std::string::npos);
  EXPECT_TRUE(engine_->OpenSession(0, std::string(128, 'a'), false).ok());

  const SessionId session = Open(0);
  ASSERT_TRUE(engine_->CreateGroup(session, Config("g"), false).ok());
  auto long_name = engine_->CreateHandle(session, "g", 0, std::string(100'000, 'h'), true);
  EXPECT_EQ(long_name.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(long_name.status().message().find("name has 100000 bytes"), std::string::npos);
  EXPECT_TRUE(engine_->CreateHandle(session, "g", 0, std::string(128, 'h'), true).ok());
}

TEST_F(EngineSecurityTest, NonFiniteWeightsAreRefusedNamingTheEntry) {
  EngineOptions options;
  Restart(options);
  GroupConfig config = Config("w");
  config.ranks = {0};
  config.experts = 2;
  const SessionId session = Open(0);
  ASSERT_TRUE(engine_->CreateGroup(session, config, false).ok());
  auto handle = engine_->CreateHandle(session, "w", 0, "", false);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  Object object(4096);
  auto buffer = engine_->RegisterBuffer(session, object.Source(4096));
  ASSERT_TRUE(buffer.ok());
  const int fd = shm_open(object.name.c_str(), O_RDWR, 0);
  auto* bytes = static_cast<char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  auto* topk = reinterpret_cast<int32_t*>(bytes);
  auto* weights = reinterpret_cast<float*>(bytes + 1024);
  for (int i = 0; i < 4; ++i) {
    topk[i] = i % 2;
    weights[i] = 0.5f;
  }
  weights[3] = std::numeric_limits<float>::quiet_NaN();  // token 1, k 1
  UpdateRequest update;
  update.handle_id = handle->id;
  update.topk_idx = TensorRef{buffer->id, 0, DType::kInt32, {2, 2}};
  update.topk_weights = TensorRef{buffer->id, 1024, DType::kFp32, {2, 2}};
  std::promise<Status> done;
  OpOptions blocking;
  blocking.blocking = true;
  ASSERT_TRUE(engine_->SubmitUpdate(session, update, blocking, [&](Status s) {
                       done.set_value(std::move(s));
                     }).ok());
  const Status status = done.get_future().get();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find("topk_weights[1][1]"), std::string::npos) << status.ToString();
  // The words the cuda backend's routing kernel reports too (routing_errors.h).
  EXPECT_NE(status.message().find("topk_weights[1][1] = nan is not a finite number"),
            std::string::npos)
      << status.ToString();
  EXPECT_NE(status.message().find(
                NonFiniteWeightError(1, 1, std::numeric_limits<float>::quiet_NaN()).message()),
            std::string::npos);

  // Finite weights bind; a Combine before any Dispatch is refused at once, not after a wait.
  weights[3] = 0.25f;
  std::promise<Status> bound;
  ASSERT_TRUE(engine_->SubmitUpdate(session, update, blocking, [&](Status s) {
                       bound.set_value(std::move(s));
                     }).ok());
  ASSERT_TRUE(bound.get_future().get().ok());
  CombineRequest combine;
  combine.handle_id = handle->id;
  combine.out = TensorRef{buffer->id, 2048, DType::kFp32, {2, 16}};
  const Status early = engine_->SubmitCombine(session, combine, blocking, [](Status) {});
  EXPECT_EQ(early.code(), StatusCode::kFailedPrecondition) << early.ToString();
  EXPECT_NE(early.message().find("dispatch before combine"), std::string::npos);
  munmap(bytes, 4096);
}

}  // namespace
}  // namespace epd
