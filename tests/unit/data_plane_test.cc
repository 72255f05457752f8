// The daemon's side of the frontend-launched data path, on the cpu backend with a fake
// device data plane: the attach descriptor (and its client-side check), the refusal of the
// daemon's own ops while frontends launch them, and the group reset when a launching
// frontend ends.
#include "daemon/core/data_plane.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>

#include "client/epd/data_path.h"
#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/core/engine.h"
#include "daemon/service/convert.h"
#include "tests/unit/engine_fixture.h"
#include "tests/unit/forwarding_backend.h"

namespace epd {
namespace {

using std::chrono::milliseconds;

using engine_testing::Config;
using engine_testing::kRanks;
using engine_testing::kTokens;
using engine_testing::kTopK;

MemorySource FakeIpc(int device, uint64_t size, char tag) {
  MemorySource source;
  source.kind = MemorySource::Kind::kCudaIpc;
  source.ipc_handle = std::string(64, tag);
  source.device = device;
  source.size = size;
  return source;
}

constexpr int kSlotBase = 5;  // the fake's handle slots: kSlotBase + group rank

// The cpu backend plus a device data plane that exists only as descriptors; resets are
// recorded and hand out increasing sequence bases.
class FakeDataPlaneBackend : public testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;

  StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& group, BackendHandle& handle) override {
    const GroupConfig& c = group.config();
    const uint64_t selections = uint64_t(c.max_tokens_per_rank) * c.top_k * 4;
    DataPlaneExport out;
    out.private_offsets = HandlePrivateOffsets{0,
                                               selections,
                                               2 * selections,
                                               3 * selections,
                                               4 * selections,
                                               5 * selections,
                                               5 * selections + 512,
                                               5 * selections + 256,
                                               256};
    if (c.high_throughput()) {
      // The packed-row plan after the low-latency buffers: dest_row [T, R], dest_counts [R].
      const uint64_t plan = out.private_offsets.bytes;
      out.private_offsets.dest_row = plan;
      out.private_offsets.dest_counts = plan + uint64_t(c.max_tokens_per_rank) * c.world_size() * 4;
      out.private_offsets.bytes = out.private_offsets.dest_counts + 256;
    }
    out.private_region =
        FakeIpc(c.ranks[handle.group_rank()], out.private_offsets.bytes, 'p');
    out.sync_area_bytes = 4096;
    out.sync_area = FakeIpc(c.ranks[handle.group_rank()], 4096, 's');
    out.max_blocks = 4;
    out.handle_slot = kSlotBase + handle.group_rank();
    return out;
  }
  StatusOr<uint64_t> ResetDataPlane(BackendGroup&, int dead_group_rank) override {
    std::lock_guard lock(mutex_);
    resets_.push_back(dead_group_rank);
    next_base_ += kGroupResetSequenceGap;
    return next_base_;
  }
  std::vector<int> resets() const {
    std::lock_guard lock(mutex_);
    return resets_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<int> resets_;
  uint64_t next_base_ = 40;
};

// What a frontend reads from the state page, mapped the way a client maps it.
struct PageView {
  uint64_t epoch = 0, base = 0;
  uint32_t magic = 0, version = 0;
};
PageView ReadStatePage(const MemorySource& source) {
  PageView view;
  const int fd = shm_open(source.shm_name.c_str(), O_RDONLY, 0);
  if (fd < 0) return view;
  void* data = mmap(nullptr, kGroupStatePageBytes, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) return view;
  const auto* page = static_cast<const GroupStatePage*>(data);
  view = PageView{page->epoch.load(std::memory_order_acquire), page->sequence_base.load(),
                  page->magic, page->version};
  munmap(data, kGroupStatePageBytes);
  return view;
}

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto fake = std::make_unique<FakeDataPlaneBackend>(
        CreateCpuBackend({2, milliseconds(2000)}).value());
    backend_ = fake.get();
    engine_ = Engine::Create(std::move(fake), EngineOptions{}).value();
    ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config(), /*persistent=*/true).ok());
    for (int r = 0; r < 2; ++r) {
      sessions_[r] = engine_->OpenSession(r, "frontend", false).value().id;
      handles_[r] = engine_->CreateHandle(sessions_[r], "g", r, "h", /*persistent=*/true)
                        .value()
                        .id;
    }
  }

  FakeDataPlaneBackend* backend_ = nullptr;
  std::unique_ptr<Engine> engine_;
  SessionId sessions_[2] = {};
  ObjectId handles_[2] = {};
};

TEST_F(DataPlaneTest, AttachDescribesEveryPeerAndPublishesTheEpoch) {
  auto info = engine_->AttachDataPlane(sessions_[1], handles_[1]);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->group_rank, 1);
  ASSERT_EQ(info->peers.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(info->peers[r].group_rank, r);
    EXPECT_EQ(info->peers[r].node_rank, r);
    EXPECT_EQ(info->peers[r].sync.size, 4096u);
    EXPECT_EQ(info->peers[r].handle_slot, kSlotBase + r);  // each peer's own slot
    EXPECT_EQ(info->peers[r].recv.kind, MemorySource::Kind::kHostShm);  // the cpu handle region
  }
  EXPECT_EQ(info->epoch, 1u);
  EXPECT_EQ(info->sequence_base, 40 + kGroupResetSequenceGap);
  EXPECT_EQ(info->timeout_ns, 2'000'000'000u);
  EXPECT_EQ(info->max_blocks, 4);
  EXPECT_EQ(backend_->resets(), std::vector<int>{-1});  // the group moved to frontend launches
  const PageView page = ReadStatePage(info->state_page);
  EXPECT_EQ(page.magic, kGroupStateMagic);
  EXPECT_EQ(page.version, kGroupStateVersion);
  EXPECT_EQ(page.epoch, 1u);
  EXPECT_EQ(page.base, info->sequence_base);

  // The second rank joins the same epoch: no second reset.
  auto other = engine_->AttachDataPlane(sessions_[0], handles_[0]);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_EQ(other->epoch, 1u);
  EXPECT_EQ(other->sequence_base, info->sequence_base);
  EXPECT_EQ(other->state_page.shm_name, info->state_page.shm_name);
  EXPECT_EQ(backend_->resets().size(), 1u);
}

TEST_F(DataPlaneTest, TheWireDescriptorPassesTheClientsCheckAndBrokenOnesNameTheField) {
  auto info = engine_->AttachDataPlane(sessions_[0], handles_[0]);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  // The cpu handle region stands in for the receive regions a cuda daemon exports by IPC.
  for (auto& peer : info->peers) peer.recv = FakeIpc(peer.node_rank, peer.recv.size, 'r');
  v1::DataPlaneInfo wire;
  service::ToProto(*info, &wire);
  EXPECT_TRUE(ValidateDataPlaneInfo(wire).ok()) << ValidateDataPlaneInfo(wire).ToString();
  ASSERT_EQ(wire.peers_size(), 2);
  EXPECT_EQ(wire.peers(1).handle_slot(), kSlotBase + 1);

  auto expect_error = [](v1::DataPlaneInfo broken, std::string_view field) {
    Status status = ValidateDataPlaneInfo(broken);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_NE(status.message().find(field), std::string::npos) << status.message();
  };
  v1::DataPlaneInfo broken = wire;
  broken.set_group_rank(2);
  expect_error(broken, "group_rank = 2");
  broken = wire;
  broken.mutable_peers()->RemoveLast();
  expect_error(broken, "peers has 1 entries");
  broken = wire;
  broken.mutable_peers(1)->set_group_rank(0);
  expect_error(broken, "peers[1].group_rank = 0");
  broken = wire;
  broken.mutable_peers(0)->mutable_sync()->set_size(8);
  expect_error(broken, "peers[0].sync.size = 8");
  broken = wire;
  broken.mutable_peers(1)->mutable_recv()->set_shm_name("/x");
  expect_error(broken, "peers[1].recv is not a 64-byte CUDA IPC handle");
  broken = wire;
  broken.mutable_private_buffers()->set_slot_offset(wire.private_buffers().total_bytes());
  expect_error(broken, "private_buffers.slot_offset");
  EXPECT_EQ(wire.private_buffers().route_scratch_bytes(), 256u);
  broken = wire;
  broken.mutable_private_buffers()->set_route_scratch_bytes(257 + 256);
  expect_error(broken, "private_buffers.route_scratch_offset");
  broken = wire;
  broken.mutable_peers(1)->set_handle_slot(128);
  expect_error(broken, "peers[1].handle_slot = 128");
  broken = wire;
  broken.set_timeout_ns(0);
  expect_error(broken, "timeout_ns = 0");
  broken = wire;
  broken.mutable_state_page()->clear_shm_name();
  expect_error(broken, "state_page");
  broken = wire;
  broken.mutable_config()->clear_ranks();
  expect_error(broken, "config.ranks has 0 entries");
}

// A high-throughput group attaches like a low-latency one; its descriptor also carries the
// packed-row plan, the resolved recv_capacity and the packed receive metadata, and the client
// checks each against the regions before mapping anything.
TEST_F(DataPlaneTest, AHighThroughputAttachCarriesItsPlanAndTheClientChecksIt) {
  GroupConfig config = Config("ht");
  config.algorithm = Algorithm::kHighThroughput;
  config.recv_capacity = 12;
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, config, /*persistent=*/true).ok());
  ObjectId handles[2] = {};
  for (int r = 0; r < 2; ++r) {
    auto handle = engine_->CreateHandle(sessions_[r], "ht", r, "", /*persistent=*/false);
    ASSERT_TRUE(handle.ok()) << handle.status().ToString();
    handles[r] = handle->id;
  }
  auto info = engine_->AttachDataPlane(sessions_[1], handles[1]);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  for (auto& peer : info->peers) peer.recv = FakeIpc(peer.node_rank, peer.recv.size, 'r');
  v1::DataPlaneInfo wire;
  service::ToProto(*info, &wire);
  EXPECT_TRUE(ValidateDataPlaneInfo(wire).ok()) << ValidateDataPlaneInfo(wire).ToString();
  EXPECT_EQ(wire.config().algorithm(), v1::ALGORITHM_HIGH_THROUGHPUT);
  EXPECT_EQ(wire.config().recv_capacity(), 12);
  EXPECT_EQ(wire.buffers().recv_rows(), 12u);
  EXPECT_EQ(wire.buffers().expert_rows_entries(), 12u * kTopK);  // M * min(K, L)
  EXPECT_EQ(wire.max_blocks(), 4);
  const uint64_t selections = uint64_t{kTokens} * kTopK * 4;
  EXPECT_EQ(wire.private_buffers().dest_row_offset(), 5 * selections + 512);
  EXPECT_EQ(wire.private_buffers().dest_counts_offset(),
            5 * selections + 512 + uint64_t{kTokens} * kRanks * 4);

  auto expect_error = [](v1::DataPlaneInfo broken, std::string_view field) {
    Status status = ValidateDataPlaneInfo(broken);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_NE(status.message().find(field), std::string::npos) << status.message();
  };
  v1::DataPlaneInfo broken = wire;
  broken.mutable_private_buffers()->set_dest_row_offset(wire.private_buffers().total_bytes() - 4);
  expect_error(broken, "private_buffers.dest_row_offset");
  broken = wire;
  broken.mutable_private_buffers()->set_dest_counts_offset(2);
  expect_error(broken, "private_buffers.dest_counts_offset = 2");
  broken = wire;
  broken.mutable_config()->set_recv_capacity(13);  // more rows than the regions hold
  expect_error(broken, "config.recv_capacity = 13");
  broken = wire;
  broken.mutable_config()->set_recv_capacity(0);
  expect_error(broken, "config.recv_capacity = 0");
  broken = wire;
  broken.mutable_buffers()->set_expert_rows_offset(wire.buffers().total_bytes());
  expect_error(broken, "buffers.expert_rows_offset");
  broken = wire;
  broken.mutable_buffers()->set_recv_rank_counts_offset(wire.buffers().total_bytes() + 4);
  expect_error(broken, "buffers.recv_rank_counts_offset");
  // The same plan offsets mean nothing to a low-latency group: not checked there.
  broken = wire;
  broken.mutable_config()->set_algorithm(v1::ALGORITHM_LOW_LATENCY);
  broken.mutable_private_buffers()->set_dest_row_offset(3);
  EXPECT_TRUE(ValidateDataPlaneInfo(broken).ok()) << ValidateDataPlaneInfo(broken).ToString();

  // A launching frontend that ends resets the high-throughput group as any other.
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[0], handles[0]).ok());
  ASSERT_TRUE(engine_->CloseSession(sessions_[1], "killed").ok());
  EXPECT_EQ(backend_->resets(), (std::vector<int>{-1, 1}));
  EXPECT_EQ(ReadStatePage(info->state_page).epoch, 2u);
}

TEST_F(DataPlaneTest, AttachNeedsEveryRanksHandleAndOnlyTheSessionsOwn) {
  ASSERT_TRUE(engine_->CreateGroup(sessions_[0], Config("lone"), false).ok());
  auto handle = engine_->CreateHandle(sessions_[0], "lone", 0, "", false);
  ASSERT_TRUE(handle.ok());
  auto missing = engine_->AttachDataPlane(sessions_[0], handle->id);
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("group rank 1"), std::string::npos)
      << missing.status().message();
  // Rank 0's session cannot name rank 1's handle.
  EXPECT_EQ(engine_->AttachDataPlane(sessions_[0], handles_[1] + 1000).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(engine_->AttachDataPlane(12345, handles_[0]).status().code(), StatusCode::kNotFound);
}

TEST_F(DataPlaneTest, TheDaemonRefusesTheGroupsOpsWhileFrontendsLaunchThem) {
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[0], handles_[0]).ok());
  DispatchRequest request;
  request.handle_id = handles_[1];  // the other rank, still on the daemon path: refused too
  Status status = engine_->SubmitDispatch(sessions_[1], request, OpOptions{}, [](Status) {});
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("frontend-launched"), std::string::npos) << status.message();
}

TEST_F(DataPlaneTest, AnEndedFrontendResetsTheGroupAndItsRankReattachesWithoutAllocating) {
  auto first = engine_->AttachDataPlane(sessions_[0], handles_[0]);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[1], handles_[1]).ok());
  ASSERT_TRUE(engine_->CloseSession(sessions_[1], "killed").ok());
  EXPECT_EQ(backend_->resets(), (std::vector<int>{-1, 1}));
  const PageView page = ReadStatePage(first->state_page);
  EXPECT_EQ(page.epoch, 2u);
  EXPECT_GT(page.base, first->sequence_base);

  // The survivor learns the new epoch from the page (or by attaching again).
  auto survivor = engine_->AttachDataPlane(sessions_[0], handles_[0]);
  ASSERT_TRUE(survivor.ok());
  EXPECT_EQ(survivor->epoch, 2u);
  EXPECT_EQ(survivor->sequence_base, page.base);

  // A restarted frontend of rank 1 re-attaches its persistent handle: nothing is allocated.
  const uint64_t allocations = engine_->Stats().allocations;
  SessionId restarted = engine_->OpenSession(1, "restarted", false).value().id;
  auto handle = engine_->AttachHandle(restarted, "h");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  auto again = engine_->AttachDataPlane(restarted, handle->id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->epoch, 2u);
  EXPECT_EQ(again->sequence_base, page.base);
  EXPECT_EQ(engine_->Stats().allocations, allocations);
  EXPECT_EQ(backend_->resets().size(), 2u);
}

TEST_F(DataPlaneTest, DestroyingALaunchedHandleResetsTheGroupForItsRank) {
  auto first = engine_->AttachDataPlane(sessions_[0], handles_[0]);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[1], handles_[1]).ok());
  ASSERT_TRUE(engine_->DestroyHandle(sessions_[1], handles_[1]).ok());
  EXPECT_EQ(backend_->resets(), (std::vector<int>{-1, 1}));
  EXPECT_EQ(ReadStatePage(first->state_page).epoch, 2u);
  // Its session ends afterwards with nothing launched left: no further reset.
  ASSERT_TRUE(engine_->CloseSession(sessions_[1], "done").ok());
  EXPECT_EQ(backend_->resets().size(), 2u);
}

TEST_F(DataPlaneTest, WhenNoFrontendLaunchesAnyMoreTheDaemonRunsTheGroupAgain) {
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[0], handles_[0]).ok());
  ASSERT_TRUE(engine_->CloseSession(sessions_[0], "done").ok());
  SessionId next = engine_->OpenSession(0, "daemon-path", false).value().id;
  auto handle = engine_->AttachHandle(next, "h");
  ASSERT_TRUE(handle.ok());
  DispatchRequest request;
  request.handle_id = handle->id;
  // Accepted by the frontend-launch check; fails later on its own arguments.
  Status status = engine_->SubmitDispatch(next, request, OpOptions{}, [](Status) {});
  EXPECT_EQ(status.message().find("frontend-launched"), std::string::npos) << status.message();
}

TEST_F(DataPlaneTest, AFailedEpochIsLeftOnceWhicheverRankAsksFirst) {
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[0], handles_[0]).ok());
  ASSERT_TRUE(engine_->AttachDataPlane(sessions_[1], handles_[1]).ok());
  // Both ranks timed out in epoch 1; the first to ask starts epoch 2, the second finds it.
  auto first = engine_->AttachDataPlane(sessions_[1], handles_[1], /*reset_epoch=*/1);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->epoch, 2u);
  auto second = engine_->AttachDataPlane(sessions_[0], handles_[0], /*reset_epoch=*/1);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->epoch, 2u);
  EXPECT_EQ(second->sequence_base, first->sequence_base);
  EXPECT_EQ(backend_->resets(), (std::vector<int>{-1, -1}));
  EXPECT_EQ(ReadStatePage(first->state_page).epoch, 2u);
  // An epoch the group never had is a request error naming it.
  auto future = engine_->AttachDataPlane(sessions_[0], handles_[0], /*reset_epoch=*/9);
  EXPECT_EQ(future.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(future.status().message().find("reset_epoch = 9"), std::string::npos)
      << future.status().message();
}

TEST(DataPlaneCpuTest, TheCpuBackendHasNoDeviceDataPlane) {
  auto engine =
      Engine::Create(CreateCpuBackend({1, milliseconds(1000)}).value(), EngineOptions{}).value();
  GroupConfig config = Config();
  config.ranks = {0};
  ASSERT_TRUE(engine->CreateGroup(std::nullopt, config, true).ok());
  SessionId session = engine->OpenSession(0, "f", false).value().id;
  auto handle = engine->CreateHandle(session, "g", 0, "", false);
  ASSERT_TRUE(handle.ok());
  auto info = engine->AttachDataPlane(session, handle->id);
  EXPECT_EQ(info.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(info.status().message().find("cpu backend has no device data plane"),
            std::string::npos)
      << info.status().message();
}

}  // namespace
}  // namespace epd
