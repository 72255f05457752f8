// Frontends restarting for months: a frontend of a persistent group killed mid-layer and a new
// one started in its place, round after round, on both data paths (the daemon's streams behind
// fences: the daemon maps the frontend's buffers; frontend-launched: the frontend maps the
// daemon's) and both algorithms. Every new frontend runs bit-exact layers, and the daemon keeps
// nothing of the dead ones: its counted device bytes, the GPU's memory in use, its descriptors
// (by kind), threads and resident memory after the last round are those of an early one.
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "tests/gpu/cuda_daemon_fixture.h"

namespace epd::testing {
namespace {

struct Path {
  std::string mode;       // the example frontend's --mode
  std::string algorithm;  // its --algorithm
};

// What the daemon holds once a round's frontends have exited.
struct Holdings {
  int64_t live_bytes = 0;   // its allocator's count (Stats)
  double gpu_used_mib = 0;  // the GPU's memory in use (this process's context included)
  int fds = 0;
  std::map<std::string, int> fds_by_kind;
  int threads = 0;
  int64_t resident_kib = 0;
};

class FrontendRestartTest : public CudaDaemonTest, public ::testing::WithParamInterface<Path> {
 protected:
  void SetUp() override {
    StartCudaDaemon("restarting frontends");
    if (IsSkipped() || HasFatalFailure()) return;
    // This process's own context, made before the first measure so that every round counts it.
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(cudaFree(nullptr), cudaSuccess);
  }

  // Once the round's frontends are gone (only the owner's session is open), everything
  // measured. With `settled`, first polled (up to 10 s) down towards it: sockets of exited
  // frontends close, and released memory goes back to the driver, a little after them.
  Holdings Measure(const Holdings* settled) {
    const v1::Stats stats = WaitForStats(*client_, [](const v1::Stats& s) {
      return s.sessions_open() == 1;  // the group owner's
    });
    EXPECT_EQ(stats.sessions_open(), 1u);
    Holdings now;
    now.live_bytes = stats.live_bytes();
    if (settled != nullptr) {
      WaitAtMost([this] { return daemon_->open_fds(); }, settled->fds);
      const int bound_mib = static_cast<int>(settled->gpu_used_mib);
      WaitAtMost([] { return static_cast<int>(Gpu0UsedMiB()); }, bound_mib);
    }
    now.gpu_used_mib = Gpu0UsedMiB();
    now.fds = daemon_->open_fds();
    now.fds_by_kind = daemon_->fds_by_kind();
    now.threads = daemon_->threads();
    now.resident_kib = daemon_->resident_kib();
    return now;
  }
};

TEST_P(FrontendRestartTest, DeadFrontendsLeaveTheDaemonNothingAndNewOnesRunBitExact) {
  const Path& path = GetParam();
  const std::string group = "restart-" + path.mode + "-" + path.algorithm;
  std::unique_ptr<Session> owner =
      CreatePersistentGroup(group, v1::DTYPE_BF16,
                            path.algorithm == "high_throughput" ? v1::ALGORITHM_HIGH_THROUGHPUT
                                                                : v1::ALGORITHM_LOW_LATENCY);
  ASSERT_NE(owner, nullptr);
  const auto args = [&](int iterations) {
    return ExampleArgs("expert_major", "bf16", iterations, group, path.algorithm, path.mode);
  };

  // The reference is the second round: by then the daemon's lazily made state and gRPC's
  // thread pools (which grow on demand by a thread or two) have settled. Later rounds must
  // hold no more device memory, descriptors or resident memory, and threads only within
  // gRPC's slack: a leak per restart exceeds that by the last round.
  constexpr int kRounds = 5, kReferenceRound = 1, kGrpcThreadSlack = 2;
  Holdings idle;
  idle.fds = daemon_->open_fds();
  std::vector<Holdings> rounds;
  for (int round = 0; round < kRounds; ++round) {
    ASSERT_NO_FATAL_FAILURE(KillOneRankMidRun(args(100000))) << "round " << round;
    ExpectExamplePasses(args(3), fmt::format("round {}", round));
    ASSERT_FALSE(HasFailure()) << "round " << round;
    EXPECT_EQ(HandlesOf(*client_, group), 0) << "round " << round << ": handles left";
    if (round == kReferenceRound) {
      // Descriptors down to what the daemon had before any frontend; device memory down to
      // the first round's (the persistent group's lazily made state is there by then).
      Holdings settled = idle;
      settled.gpu_used_mib = rounds.front().gpu_used_mib;
      rounds.push_back(Measure(&settled));
    } else {
      rounds.push_back(Measure(round == kRounds - 1 ? &rounds[kReferenceRound] : nullptr));
    }
  }

  std::vector<int64_t> live, resident;
  std::vector<double> used;
  std::vector<int> fds, threads;
  for (const Holdings& h : rounds) {
    live.push_back(h.live_bytes);
    used.push_back(h.gpu_used_mib);
    fds.push_back(h.fds);
    threads.push_back(h.threads);
    resident.push_back(h.resident_kib / 1024);
  }
  std::printf(
      "[   INFO   ] %s %s, after each death and restart: daemon's device bytes %s, GPU memory "
      "in use %s MiB, descriptors %s, threads %s, resident %s MiB\n",
      path.mode.c_str(), path.algorithm.c_str(), fmt::format("{}", fmt::join(live, " ")).c_str(),
      fmt::format("{:.0f}", fmt::join(used, " ")).c_str(),
      fmt::format("{}", fmt::join(fds, " ")).c_str(),
      fmt::format("{}", fmt::join(threads, " ")).c_str(),
      fmt::format("{}", fmt::join(resident, " ")).c_str());

  const Holdings& reference = rounds[kReferenceRound];
  const Holdings& last = rounds.back();
  for (size_t r = 1; r < rounds.size(); ++r) {
    EXPECT_EQ(rounds[r].live_bytes, rounds[0].live_bytes) << "round " << r;
  }
  // A leaked mapping or allocation of a frontend's buffers is at least one 2 MiB page.
  EXPECT_LT(last.gpu_used_mib - reference.gpu_used_mib, 2.0)
      << "the GPU's memory in use grew over " << kRounds - 1 - kReferenceRound << " restarts";
  for (const auto& [kind, count] : last.fds_by_kind) {
    const auto before = reference.fds_by_kind.find(kind);
    EXPECT_LE(count, before == reference.fds_by_kind.end() ? 0 : before->second)
        << "the daemon keeps descriptors of kind " << kind;
  }
  EXPECT_LE(last.threads, reference.threads + kGrpcThreadSlack)
      << "the daemon keeps threads of dead frontends";
  // Allocator slack, not growth: a round's buffers, handles and sessions are well below this.
  EXPECT_LT(last.resident_kib - reference.resident_kib, 16 * 1024)
      << "the daemon's resident memory grew by more than 16 MiB";
  EXPECT_TRUE(owner->Close().ok());
}

INSTANTIATE_TEST_SUITE_P(Paths, FrontendRestartTest,
                         ::testing::Values(Path{"fenced", "low_latency"},
                                           Path{"fenced", "high_throughput"},
                                           Path{"frontend", "low_latency"},
                                           Path{"frontend", "high_throughput"}),
                         [](const ::testing::TestParamInfo<Path>& info) {
                           return info.param.mode + "_" + info.param.algorithm;
                         });

}  // namespace
}  // namespace epd::testing
