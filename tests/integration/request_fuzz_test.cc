// Randomised bad input against the real daemon (cpu backend): requests built from what a
// working frontend sends, each with one field changed at random (proto_mutator.h).
// - Unary calls: two fuzzing frontends (one per rank of their own group) while another pair
//   runs layers of another group checked bit for bit. Every answer comes within a bound, with
//   a canonical code other than INTERNAL / UNKNOWN / UNIMPLEMENTED / DATA_LOSS, and an error
//   has a bounded message naming the field or the value; the other group keeps serving; once
//   the fuzzing sessions are gone the daemon holds no more memory, sessions, file descriptors
//   or shared-memory objects than before.
// - The Session stream: one answer per request, in order, with its request_id.
// - The leader's Cluster service, with the right token: the deployment stays as it was.
// Seeds are fixed, so a failure names the request that caused it (its change and its answer);
// the interleaving of concurrent threads is not. EPD_FUZZ_LOG=<file> keeps every request of
// the first test with its answer.
#include <dirent.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <type_traits>

#include "epd/v1/cluster.grpc.pb.h"
#include "tests/integration/client_test_support.h"
#include "tests/integration/multinode_support.h"
#include "tests/integration/proto_mutator.h"

namespace epd::testing {
namespace {

using example::Problem;
using SteadyClock = std::chrono::steady_clock;

constexpr int kRounds = 4;              // one per kind of group (RoundProblem)
constexpr int kRequestsPerRound = 150;  // per fuzzing rank

// EPD_FUZZ_SCALE=N runs N times the rounds, streams and cluster requests, with other seeds
// beyond the first N = 1 (a longer hunt by hand; CI runs N = 1).
int Scale() {
  const char* scale = std::getenv("EPD_FUZZ_SCALE");
  return scale != nullptr && std::atoi(scale) > 1 ? std::atoi(scale) : 1;
}
constexpr int kOpTimeoutMs = 1000;
// No answer within this is a hang: every wait of the daemon is bounded by the op timeout.
constexpr auto kAnswerBound = std::chrono::seconds(10);

// What one changed request got.
struct Outcome {
  std::string request;  // "<rpc> rank <r>: <change>"
  StatusCode code;
  std::string message;
  std::chrono::milliseconds took;
  Mutation change;
};

// Whether the answer refuses a value read from the routing tensors (topk_idx[t, k] on the cpu
// backend, topk_weights[t][k] on the cuda one): the bind's check of the buffer's content.
bool NamesARoutingValue(const Outcome& outcome) {
  static const std::regex value(R"(topk_(idx|weights)\[\d+)");
  return outcome.code == StatusCode::kInvalidArgument && std::regex_search(outcome.message, value);
}

// Whether `message` names a field on the changed path or quotes the value it was set to.
bool NamesTheChange(const std::string& message, const Mutation& change) {
  std::string path = change.path;
  for (size_t open = path.find('['); open != std::string::npos; open = path.find('[')) {
    path.erase(open, path.find(']', open) - open + 1);
  }
  for (size_t begin = 0; begin <= path.size();) {
    const size_t end = std::min(path.find('.', begin), path.size());
    if (end > begin && message.find(path.substr(begin, end - begin)) != std::string::npos) {
      return true;
    }
    begin = end + 1;
  }
  const std::string quoted = change.value.empty() ? "''" : change.value.substr(0, 20);
  return message.find(quoted) != std::string::npos;
}

bool IsCanonicalError(StatusCode code) {
  switch (code) {
    case StatusCode::kInternal:
    case StatusCode::kUnknown:
    case StatusCode::kUnimplemented:
    case StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

int CountEntries(const std::string& dir, std::string_view prefix) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(d)) {
    if (std::string_view(entry->d_name).substr(0, prefix.size()) == prefix) ++count;
  }
  closedir(d);
  return count;
}

int OpenFds(pid_t pid) { return CountEntries(fmt::format("/proc/{}/fd", pid), "") - 2; }
int EpdShmObjects() { return CountEntries("/dev/shm", "epd"); }

// Polls `value` until it is at most `bound` (10 s); returns the last value.
int WaitAtMost(const std::function<int()>& value, int bound) {
  int got = value();
  for (int i = 0; i < 1000 && got > bound; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    got = value();
  }
  return got;
}

// The small layer every group here starts from: bf16, E 4, H 64, T 16, K 2.
Problem SmallProblem(int ranks) {
  Problem p;
  p.ranks = ranks;
  p.experts = 4;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 2;
  p.dtype = v1::DTYPE_BF16;
  return p;
}

class RequestFuzzTest : public ::testing::Test {
 protected:
  // EPD_FUZZ_BACKEND=cuda fuzzes `epd --backend cuda` (a GPU host: tensors in device memory,
  // buffers registered by CUDA IPC handle) over min(GPUs, 2) ranks; else the cpu backend.
  void SetUp() override {
    const char* backend = std::getenv("EPD_FUZZ_BACKEND");
    const bool cuda = backend != nullptr && std::string_view(backend) == "cuda";
    std::vector<std::string> args = {"--op-timeout-ms", std::to_string(kOpTimeoutMs)};
    if (cuda) args.insert(args.end(), {"--backend", "cuda"});
    auto daemon = DaemonProcess::Start(args, 2);
    if (cuda && !daemon.ok() &&
        daemon.status().message().find("no CUDA GPU") != std::string::npos) {
      GTEST_SKIP() << "EPD_FUZZ_BACKEND=cuda needs a GPU: " << daemon.status().message();
    }
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    auto client = ConnectOrDie(daemon_->address());
    auto info = client->GetNodeInfo();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    ranks_ = cuda ? std::min(info->gpus_size(), 2) : 2;
    problem_ = SmallProblem(ranks_);
  }

  StatusOr<std::vector<RankClient>> MakeWorld(const std::string& group) {
    return MakeWorld(group, problem_);
  }
  StatusOr<std::vector<RankClient>> MakeWorld(const std::string& group, const Problem& problem) {
    example::RankRunnerOptions options;
    options.group = group;
    return MakeRanks(daemon_->address(), problem, options);
  }
  // The fuzzed group of round `round`: each round another layout, algorithm or payload, so
  // that the checks of each are reached.
  Problem RoundProblem(int round) const {
    Problem p = problem_;
    switch (round % 4) {
      case 1:
        p.layout = v1::LAYOUT_RANK_MAJOR;
        break;
      case 2:
        p.algorithm = v1::ALGORITHM_HIGH_THROUGHPUT;
        // Below R * T, so overflow is reachable (with one rank the layer itself needs all T).
        p.recv_capacity = p.ranks > 1 ? p.ranks * p.max_tokens - 4 : 0;
        break;
      case 3:
        p.hidden = 128;
        p.fp8 = true;
        p.prequantized = true;
        p.scale_format = v1::SCALE_FORMAT_UE8M0;
        break;
      default:
        break;
    }
    return p;
  }

  // One changed request of a random kind from fuzzing rank `rank` of `world`.
  // `bound`: the tokens rank's last successful UpdateHandle bound (its ops' shapes follow).
  Outcome SendOne(std::vector<RankClient>& world, int rank, const std::string& group, int& bound,
                  std::mt19937_64& rng);

  // Records what a successful changed request of `rank` left that outlives its session.
  void NoteSurvivors(int rank, const google::protobuf::Message& request);

  std::unique_ptr<DaemonProcess> daemon_;
  int ranks_ = 2;  // of every group, and fuzzing threads
  Problem problem_;
  std::mutex survivors_mu_;
  // Guarded by survivors_mu_; a set: both ranks may create the same persistent group.
  std::set<std::string> persistent_groups_;
  std::vector<std::pair<int, std::string>> persistent_handles_;   // (rank, name)
  std::vector<std::pair<uint64_t, std::string>> unary_sessions_;  // (id, secret)
};

template <typename Request, typename Response>
Outcome Call(v1::Epd::Stub& stub,
             grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
             const Request& request, const std::string& secret, Response* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kAnswerBound);
  context.AddMetadata(std::string(kSessionSecretHeader), secret);
  const auto start = SteadyClock::now();
  const Status status = FromGrpcStatus((stub.*method)(&context, request, response));
  return {"", status.code(), std::string(status.message()),
          std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start)};
}

Outcome RequestFuzzTest::SendOne(std::vector<RankClient>& world, int rank, const std::string& group,
                                 int& bound, std::mt19937_64& rng) {
  example::RankRunner& runner = *world[rank].runner;
  v1::Epd::Stub& stub = world[rank].client->stub();
  const uint64_t session = runner.session().id();
  const std::string& secret = runner.session().secret();
  const int n = std::uniform_int_distribution<int>(0, problem_.max_tokens)(rng);
  // Builds the request, changes one field, sends it and names it in the outcome.
  auto fuzz = [&](const char* rpc, auto method, auto request, auto response) {
    const Mutation change = MutateOneField(request, rng);
    Outcome outcome = Call(stub, method, request, secret, &response);
    outcome.request = fmt::format("{} rank {}: {}", rpc, rank, change.description);
    outcome.change = change;
    if (outcome.code == StatusCode::kOk) {
      NoteSurvivors(rank, request);
    }
    // The token count an update binds is taken when the daemon accepts it; a routing that then
    // fails its check (answered naming a value of topk_idx or topk_weights) is bound all the
    // same, and the next dispatch fails saying so.
    if constexpr (std::is_same_v<decltype(request), v1::UpdateHandleRequest>) {
      const bool bound_anyway = outcome.code == StatusCode::kOk || NamesARoutingValue(outcome);
      // (Another handle of the session, made by a changed CreateHandle, binds its own.)
      if (bound_anyway && request.handle_id() == runner.handle_id() &&
          request.topk_idx().shape_size() > 0) {
        bound = static_cast<int>(request.topk_idx().shape(0));
      }
    }
    return outcome;
  };
  switch (std::uniform_int_distribution<int>(0, 17)(rng)) {
    case 0:
    case 1: {  // the data-plane ops come up most often
      v1::UpdateHandleRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      *r.mutable_topk_idx() = runner.topk_ref(n);
      *r.mutable_topk_weights() = runner.weights_ref(n);
      *r.mutable_options() = BlockingOptions();
      return fuzz("UpdateHandle", &v1::Epd::Stub::UpdateHandle, r, v1::OpResponse());
    }
    case 2:
    case 3: {
      v1::DispatchRequest r = runner.DispatchRequestFor(bound, BlockingOptions());
      r.set_session_id(session);
      return fuzz("Dispatch", &v1::Epd::Stub::Dispatch, r, v1::OpResponse());
    }
    case 4:
    case 5: {
      v1::CombineRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      *r.mutable_out() = runner.out_ref(bound);
      if (runner.problem().fp8) *r.mutable_expert_out() = runner.expert_out_ref();
      *r.mutable_options() = BlockingOptions();
      return fuzz("Combine", &v1::Epd::Stub::Combine, r, v1::OpResponse());
    }
    case 6: {
      v1::RegisterBufferRequest r;
      r.set_session_id(session);
      *r.mutable_source() = runner.buffer_source();
      return fuzz("RegisterBuffer", &v1::Epd::Stub::RegisterBuffer, r,
                  v1::RegisterBufferResponse());
    }
    case 7: {
      v1::ReleaseBufferRequest r;
      r.set_session_id(session);
      r.set_buffer_id(runner.buffer_id());
      return fuzz("ReleaseBuffer", &v1::Epd::Stub::ReleaseBuffer, r, v1::ReleaseBufferResponse());
    }
    case 8: {
      v1::CreateFenceRequest r;
      r.set_session_id(session);
      return fuzz("CreateFence", &v1::Epd::Stub::CreateFence, r, v1::CreateFenceResponse());
    }
    case 9: {
      v1::DestroyFenceRequest r;
      r.set_session_id(session);
      r.set_fence_id(1);
      return fuzz("DestroyFence", &v1::Epd::Stub::DestroyFence, r, v1::DestroyFenceResponse());
    }
    case 10: {
      v1::CreateGroupRequest r;
      r.set_session_id(session);
      *r.mutable_config() = runner.problem().Config(group + "-more");
      return fuzz("CreateGroup", &v1::Epd::Stub::CreateGroup, r, v1::CreateGroupResponse());
    }
    case 11: {
      v1::DestroyGroupRequest r;
      r.set_session_id(session);
      r.set_name(group);
      return fuzz("DestroyGroup", &v1::Epd::Stub::DestroyGroup, r, v1::DestroyGroupResponse());
    }
    case 12: {
      v1::CreateHandleRequest r;
      r.set_session_id(session);
      r.set_group(group);
      return fuzz("CreateHandle", &v1::Epd::Stub::CreateHandle, r, v1::HandleInfo());
    }
    case 13: {
      v1::AttachHandleRequest r;
      r.set_session_id(session);
      r.set_name(group + "-handle");
      return fuzz("AttachHandle", &v1::Epd::Stub::AttachHandle, r, v1::HandleInfo());
    }
    case 14: {
      v1::DestroyHandleRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      return fuzz("DestroyHandle", &v1::Epd::Stub::DestroyHandle, r, v1::DestroyHandleResponse());
    }
    case 15: {
      v1::AttachDataPlaneRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      return fuzz("AttachDataPlane", &v1::Epd::Stub::AttachDataPlane, r, v1::DataPlaneInfo());
    }
    case 16: {
      v1::OpenSessionRequest r;
      r.set_rank(rank);
      r.set_client_name("fuzz");
      v1::OpenSessionResponse opened;
      const Mutation change = MutateOneField(r, rng);
      Outcome outcome = Call(stub, &v1::Epd::Stub::OpenSession, r, secret, &opened);
      outcome.request = fmt::format("OpenSession rank {}: {}", rank, change.description);
      outcome.change = change;
      if (outcome.code == StatusCode::kOk) {
        std::lock_guard lock(survivors_mu_);
        unary_sessions_.emplace_back(opened.session_id(), opened.session_secret());
      }
      return outcome;
    }
    default: {
      v1::ListGroupsRequest r;
      r.set_page_token("");
      return fuzz("ListGroups", &v1::Epd::Stub::ListGroups, r, v1::ListGroupsResponse());
    }
  }
}

void RequestFuzzTest::NoteSurvivors(int rank, const google::protobuf::Message& request) {
  std::lock_guard lock(survivors_mu_);
  if (const auto* group = dynamic_cast<const v1::CreateGroupRequest*>(&request)) {
    if (group->persistent()) persistent_groups_.insert(group->config().name());
  }
  if (const auto* handle = dynamic_cast<const v1::CreateHandleRequest*>(&request)) {
    if (handle->persistent()) persistent_handles_.emplace_back(rank, handle->name());
  }
}

TEST_F(RequestFuzzTest, ChangedRequestsGetCanonicalAnswersAndNothingLeaks) {
  auto good = MakeWorld(UniqueName("good"));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*good, 0));
  auto stats_client = ConnectOrDie(daemon_->address());
  auto baseline = stats_client->GetStats();
  ASSERT_TRUE(baseline.ok()) << baseline.status().ToString();
  const int baseline_fds = OpenFds(daemon_->pid());
  const int baseline_shm = EpdShmObjects();

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  // Every request and its answer, for a reader of a failure: EPD_FUZZ_LOG=<file>.
  std::ofstream log;
  if (const char* path = std::getenv("EPD_FUZZ_LOG")) log.open(path);
  int good_layers = 1;
  const int rounds = kRounds * Scale();
  for (int round = 0; round < rounds; ++round) {
    const std::string group = UniqueName("fuzz");
    auto world = MakeWorld(group, RoundProblem(round));
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    ASSERT_EPD_OK(RunGoodLayer(*world, 0));  // bound routing: the ops below reach the data path

    std::vector<std::vector<Outcome>> outcomes(ranks_);
    std::vector<std::thread> fuzzers;
    for (int rank = 0; rank < ranks_; ++rank) {
      fuzzers.emplace_back([&, rank] {
        std::mt19937_64 rng(1000 * round + rank);
        int bound =
            example::TokensFor((*world)[rank].runner->problem(), rank, 0);  // the layer above
        for (int i = 0; i < kRequestsPerRound; ++i) {
          outcomes[rank].push_back(SendOne(*world, rank, group, bound, rng));
        }
      });
    }
    // The other group keeps serving while the fuzzing runs.
    std::atomic<bool> fuzzing{true};
    std::thread checker([&] {
      while (fuzzing.load()) {
        const Status layer = RunGoodLayer(*good, good_layers++);
        if (!layer.ok()) {
          failures.push_back(
              fmt::format("round {}: the other group's layer failed: {}", round, layer.ToString()));
          return;
        }
        // Leaves a core to the daemon on a 2-core machine.
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
    for (std::thread& t : fuzzers) t.join();
    fuzzing.store(false);
    checker.join();

    for (const auto& rank_outcomes : outcomes) {
      for (const Outcome& o : rank_outcomes) {
        ++codes[o.code];
        if (log.is_open()) {
          log << o.request << " -> " << StatusCodeName(o.code) << " " << o.took.count()
              << " ms: " << o.message << "\n";
        }
        if (!IsCanonicalError(o.code)) {
          failures.push_back(
              fmt::format("{} -> {}: {}", o.request, StatusCodeName(o.code), o.message));
        } else if (o.took >= kAnswerBound - std::chrono::milliseconds(500)) {
          failures.push_back(fmt::format("{} -> no answer within {} s ({}: {})", o.request,
                                         kAnswerBound.count(), StatusCodeName(o.code), o.message));
        } else if (o.code != StatusCode::kOk && o.message.empty()) {
          failures.push_back(
              fmt::format("{} -> {} without a message", o.request, StatusCodeName(o.code)));
        } else if ((o.code == StatusCode::kInvalidArgument || o.code == StatusCode::kNotFound) &&
                   !NamesTheChange(o.message, o.change) &&
                   // A routing value refused is the buffer's content, which changed ops that
                   // succeeded may have written over: no field to name.
                   !NamesARoutingValue(o)) {
          failures.push_back(fmt::format("{} -> {}, naming neither the field nor the value: {}",
                                         o.request, StatusCodeName(o.code), o.message));
        } else if (o.message.size() > kMaxAnswerMessageBytes) {
          failures.push_back(
              fmt::format("{} -> a message of {} bytes", o.request, o.message.size()));
        }
      }
    }
    world->clear();  // the fuzzing sessions end
  }

  // What outlives a session goes explicitly; then the daemon holds what it held before.
  {
    auto cleanup = ConnectOrDie(daemon_->address());
    for (const auto& [id, secret] : unary_sessions_) {
      v1::CloseSessionRequest close;
      close.set_session_id(id);
      v1::CloseSessionResponse closed;
      Call(cleanup->stub(), &v1::Epd::Stub::CloseSession, close, secret, &closed);
    }
    for (int rank = 0; rank < ranks_; ++rank) {
      auto session = cleanup->OpenSession(rank, "fuzz-cleanup");
      ASSERT_TRUE(session.ok()) << session.status().ToString();
      for (const auto& [handle_rank, name] : persistent_handles_) {
        if (handle_rank != rank) continue;
        auto attached = (*session)->AttachHandle(name);
        ASSERT_TRUE(attached.ok()) << name << ": " << attached.status().ToString();
        ASSERT_EPD_OK((*session)->DestroyHandle(attached->handle_id()));
      }
      if (rank == 0) {
        for (const std::string& name : persistent_groups_) {
          EXPECT_EPD_OK((*session)->DestroyGroup(name));
        }
      }
    }
  }
  const v1::Stats after = WaitForStats(*stats_client, [&](const v1::Stats& s) {
    return s.live_bytes() == baseline->live_bytes() &&
           s.sessions_open() == baseline->sessions_open();
  });
  EXPECT_EQ(after.live_bytes(), baseline->live_bytes()) << "bytes still held by fuzzed sessions";
  EXPECT_EQ(after.sessions_open(), baseline->sessions_open()) << "sessions left open";
  EXPECT_LE(WaitAtMost([&] { return OpenFds(daemon_->pid()); }, baseline_fds), baseline_fds)
      << "file descriptors the daemon still holds";
  EXPECT_LE(WaitAtMost(EpdShmObjects, baseline_shm), baseline_shm)
      << "shared-memory objects left in /dev/shm";
  EXPECT_EPD_OK(RunGoodLayer(*good, good_layers));

  std::string summary;
  for (const auto& [code, count] : codes) {
    summary += fmt::format(" {} {}", StatusCodeName(code), count);
  }
  std::cout << "answers:" << summary << "; layers of the other group: " << good_layers << "\n";
  // The requests reached the daemon's checks (not all turned away at the door) and some
  // changes were harmless (the templates are valid requests).
  const int total = rounds * kRequestsPerRound * ranks_;
  EXPECT_GE(codes[StatusCode::kInvalidArgument], total / 10) << summary;
  EXPECT_GE(codes[StatusCode::kOk], total / 20) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

// The Session stream: each stream opens a session (the open itself changed now and then, or
// replaced by an op), gives it a one-rank group, a handle and a buffer through unary calls,
// then sends ops changed one field each, some pipelined. Every request gets one answer, in
// order, with its request_id and a canonical code; the stream ends with a canonical status.
TEST_F(RequestFuzzTest, ChangedSessionStreamRequestsGetOneAnswerEachInOrder) {
  auto world = MakeWorld(UniqueName("fuzz-stream"));
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*world, 0));  // staged tokens and routing in the shared buffers
  auto client = ConnectOrDie(daemon_->address());
  auto baseline = client->GetStats();
  ASSERT_TRUE(baseline.ok()) << baseline.status().ToString();

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  constexpr int kStreams = 64;
  constexpr int kOpsPerStream = 30;
  const int streams = kStreams * Scale();
  for (int stream_index = 0; stream_index < streams; ++stream_index) {
    std::mt19937_64 rng(7000 + stream_index);
    const int rank = stream_index % ranks_;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 2 * kAnswerBound);
    auto stream = client->stub().Session(&context);
    std::vector<uint64_t> sent;  // request ids in order
    auto send = [&](v1::SessionRequest request, bool change, std::string* what) {
      if (change) *what = MutateOneField(request, rng).description;
      sent.push_back(request.request_id());
      return stream->Write(request);
    };
    std::string what = "open unchanged";
    v1::SessionRequest open;
    open.set_request_id(1);
    open.mutable_open()->set_rank(rank);
    open.mutable_open()->set_client_name("fuzz-stream");
    const bool opened_sent = send(open, std::uniform_int_distribution<int>(0, 3)(rng) == 0, &what);
    v1::SessionResponse opened;
    const bool answered = opened_sent && stream->Read(&opened);
    const std::string name = fmt::format("stream {} ({})", stream_index, what);
    size_t read = answered ? 1 : 0;
    if (answered && opened.code() == 0 && opened.has_opened()) {
      // A one-rank group of the stream's own, its handle and the buffer of a frontend of the
      // rank it opened (a changed open may have named another).
      const int opened_rank = opened.opened().rank();
      example::RankRunner& runner = *(*world)[opened_rank].runner;
      const uint64_t session = opened.opened().session_id();
      const std::string secret = opened.opened().session_secret();
      v1::CreateGroupRequest group;
      group.set_session_id(session);
      *group.mutable_config() = problem_.Config(UniqueName("stream-group"));
      group.mutable_config()->clear_ranks();
      group.mutable_config()->add_ranks(opened_rank);
      group.mutable_config()->set_world_size(1);
      v1::CreateGroupResponse group_created;
      v1::RegisterBufferRequest buffer;
      buffer.set_session_id(session);
      *buffer.mutable_source() = runner.buffer_source();
      v1::RegisterBufferResponse registered;
      v1::CreateHandleRequest handle;
      handle.set_session_id(session);
      handle.set_group(group.config().name());
      v1::HandleInfo created;
      const Outcome steps[] = {
          Call(client->stub(), &v1::Epd::Stub::CreateGroup, group, secret, &group_created),
          Call(client->stub(), &v1::Epd::Stub::RegisterBuffer, buffer, secret, &registered),
          Call(client->stub(), &v1::Epd::Stub::CreateHandle, handle, secret, &created)};
      for (const Outcome& step : steps) {
        ASSERT_EQ(step.code, StatusCode::kOk) << name << ": " << step.message;
      }
      auto on_buffer = [&](v1::TensorRef ref) {
        ref.set_buffer_id(registered.buffer_id());
        return ref;
      };
      int bound = 0;  // what the stream's own updates bind (the changes aside)
      for (int i = 0; i < kOpsPerStream; ++i) {
        v1::SessionRequest op;
        op.set_request_id(100 + i);
        const int n = std::uniform_int_distribution<int>(0, problem_.max_tokens)(rng);
        switch (std::uniform_int_distribution<int>(0, 2)(rng)) {
          case 0: {
            v1::UpdateHandleRequest* u = op.mutable_update();
            u->set_handle_id(created.handle_id());
            *u->mutable_topk_idx() = on_buffer(runner.topk_ref(n));
            *u->mutable_topk_weights() = on_buffer(runner.weights_ref(n));
            bound = n;
            break;
          }
          case 1: {
            *op.mutable_dispatch() = runner.DispatchRequestFor(bound, BlockingOptions());
            op.mutable_dispatch()->set_handle_id(created.handle_id());
            *op.mutable_dispatch()->mutable_x() = on_buffer(op.dispatch().x());
            break;
          }
          default: {
            v1::CombineRequest* c = op.mutable_combine();
            c->set_handle_id(created.handle_id());
            *c->mutable_out() = on_buffer(runner.out_ref(bound));
            break;
          }
        }
        std::string change;
        if (!send(op, std::uniform_int_distribution<int>(0, 3)(rng) != 0, &change)) break;
        // Now and then read what is answered so far; otherwise the requests pipeline.
        while (std::uniform_int_distribution<int>(0, 2)(rng) == 0 && read < sent.size()) {
          v1::SessionResponse response;
          if (!stream->Read(&response)) break;
          if (response.request_id() != sent[read]) {
            failures.push_back(fmt::format("{}: answer {} has request_id {}, expected {}", name,
                                           read, response.request_id(), sent[read]));
          }
          ++codes[static_cast<StatusCode>(response.code())];
          if (!IsCanonicalError(static_cast<StatusCode>(response.code())) ||
              (response.code() != 0 && response.message().empty())) {
            failures.push_back(fmt::format("{}: request {} ({}) -> code {}: '{}'", name, sent[read],
                                           change, response.code(), response.message()));
          }
          ++read;
        }
      }
    }
    stream->WritesDone();
    v1::SessionResponse response;
    while (stream->Read(&response)) {
      if (read < sent.size() && response.request_id() != sent[read]) {
        failures.push_back(fmt::format("{}: answer {} has request_id {}, expected {}", name, read,
                                       response.request_id(), sent[read]));
      }
      ++codes[static_cast<StatusCode>(response.code())];
      if (!IsCanonicalError(static_cast<StatusCode>(response.code()))) {
        failures.push_back(fmt::format("{}: request {} -> code {}: '{}'", name,
                                       response.request_id(), response.code(), response.message()));
      }
      ++read;
    }
    const Status finished = FromGrpcStatus(stream->Finish());
    if (!IsCanonicalError(finished.code()) || finished.code() == StatusCode::kDeadlineExceeded) {
      failures.push_back(fmt::format("{}: the stream ended with {}", name, finished.ToString()));
    }
    // A stream that ends early (a refused first request) leaves later requests unanswered;
    // one that ends OK answered every request.
    if (finished.ok() && read != sent.size()) {
      failures.push_back(
          fmt::format("{}: {} answers to {} requests, then OK", name, read, sent.size()));
    }
  }
  const v1::Stats after = WaitForStats(*client, [&](const v1::Stats& s) {
    return s.live_bytes() == baseline->live_bytes() &&
           s.sessions_open() == baseline->sessions_open();
  });
  EXPECT_EQ(after.live_bytes(), baseline->live_bytes()) << "bytes still held by ended streams";
  EXPECT_EQ(after.sessions_open(), baseline->sessions_open()) << "sessions left open";
  EXPECT_EPD_OK(RunGoodLayer(*world, 1));
  std::string summary;
  for (const auto& [code, count] : codes) {
    summary += fmt::format(" {} {}", StatusCodeName(code), count);
  }
  std::cout << "stream answers:" << summary << "\n";
  EXPECT_GE(codes[StatusCode::kOk], streams * kOpsPerStream / 10) << summary;
  EXPECT_GE(codes[StatusCode::kInvalidArgument], streams * kOpsPerStream / 10) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

// The leader's Cluster service, called by an authenticated peer (the right token) with
// requests changed one field each: canonical answers within the bound; the real follower
// keeps its membership; the leader keeps serving its frontends.
TEST(ClusterFuzzTest, ChangedClusterRequestsGetCanonicalAnswersAndTheDeploymentStays) {
  auto cluster = LoopbackCluster::Create(2);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  ASSERT_EPD_OK((*cluster)->StartAll());
  std::ifstream token_file((*cluster)->token_file());
  std::string token((std::istreambuf_iterator<char>(token_file)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  ASSERT_FALSE(token.empty());
  auto stub = v1::Cluster::NewStub(
      grpc::CreateChannel((*cluster)->leader(), grpc::InsecureChannelCredentials()));
  example::RankRunnerOptions options;
  options.group = UniqueName("leader-local");
  auto frontends = MakeRanks((*cluster)->node(0).address(), SmallProblem(kRanksPerNode), options);
  ASSERT_TRUE(frontends.ok()) << frontends.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*frontends, 0));

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  std::mt19937_64 rng(4242);
  auto call = [&](auto method, auto request, auto response) {
    const Mutation change = MutateOneField(request, rng);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kAnswerBound);
    const auto start = SteadyClock::now();
    const Status status = FromGrpcStatus(((*stub).*method)(&context, request, &response));
    const auto took = SteadyClock::now() - start;
    ++codes[status.code()];
    if (!IsCanonicalError(status.code()) || took >= kAnswerBound - std::chrono::milliseconds(500) ||
        (!status.ok() && status.message().empty()) ||
        status.message().size() > kMaxAnswerMessageBytes) {
      failures.push_back(fmt::format("{} -> {}", change.description, status.ToString()));
    }
  };
  for (int i = 0; i < 400 * Scale(); ++i) {
    const std::string key = fmt::format("fuzz/{}", i % 7);
    switch (std::uniform_int_distribution<int>(0, 4)(rng)) {
      case 0: {
        v1::JoinRequest r;
        r.set_token(token);
        r.set_node_rank(1);
        r.set_nodes(2);
        r.set_ranks_per_node(kRanksPerNode);
        r.set_address("127.0.0.1");
        r.set_incarnation(rng());
        call(&v1::Cluster::Stub::Join, r, v1::JoinResponse());
        break;
      }
      case 1: {
        v1::HeartbeatRequest r;
        r.set_token(token);
        r.set_node_rank(1);
        r.set_incarnation(rng());
        call(&v1::Cluster::Stub::Heartbeat, r, v1::ClusterView());
        break;
      }
      case 2: {
        v1::StoreSetRequest r;
        r.set_token(token);
        r.set_key(key);
        r.set_value("value");
        call(&v1::Cluster::Stub::StoreSet, r, v1::StoreSetResponse());
        break;
      }
      case 3: {
        v1::StoreGetRequest r;
        r.set_token(token);
        r.set_key(key);
        call(&v1::Cluster::Stub::StoreGet, r, v1::StoreGetResponse());
        break;
      }
      default: {
        v1::StoreMaxRequest r;
        r.set_token(token);
        r.set_key(key);
        r.set_value(i);
        call(&v1::Cluster::Stub::StoreMax, r, v1::StoreMaxResponse());
        break;
      }
    }
  }
  // The deployment as it was: both nodes up in the leader's view, its frontends served.
  auto client = ConnectOrDie((*cluster)->node(0).address());
  auto info = client->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  for (const v1::ClusterNode& member : info->cluster().members()) {
    EXPECT_EQ(member.state(), v1::NODE_STATE_UP) << "node " << member.node_rank();
    EXPECT_EQ(member.joins(), 1u) << "node " << member.node_rank();
  }
  EXPECT_TRUE((*cluster)->node(1).running());
  EXPECT_EPD_OK(RunGoodLayer(*frontends, 1));
  std::string summary;
  for (const auto& [code, count] : codes) {
    summary += fmt::format(" {} {}", StatusCodeName(code), count);
  }
  std::cout << "cluster answers:" << summary << "\n";
  EXPECT_GE(codes[StatusCode::kOk], 40) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

}  // namespace
}  // namespace epd::testing
