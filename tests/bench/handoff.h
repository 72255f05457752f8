// The floor of a GPU hand-off between two CUDA contexts, measured in isolation: two sides pass
// a 64-bit flag back and forth with stream memory operations (cuStreamWaitValue64 /
// cuStreamWriteValue64) and one tiny kernel per side per step, as a frontend and the daemon
// do once per fenced op. Run between two processes (two contexts: time-sliced without MPS,
// concurrent with it) and between two streams of one process (the same work, no context
// switch), it tells an operator what MPS buys on their GPU and why, without MPS, the
// frontend-launched data path exists.
//
// One round trip: side P writes A = i, side Q waits A >= i (each side's wait: a memop or a
// spinning kernel, --p-wait / --q-wait), runs its kernel, writes B = i,
// P waits B >= i and runs its kernel. Every step is enqueued ahead behind a host gate, so the
// span is pure GPU time: CUDA events on P's stream around `iterations` round trips.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"

namespace epd::bench::handoff {

// How a side waits for the other's flag: a stream memory operation (cuStreamWaitValue64,
// what the client library's fence waits use) or a one-thread kernel spinning on it (what the
// daemon's fence waits use). Without MPS a spinning kernel holds its context's time slice.
enum class WaitKind { kMemOp, kSpin };
const char* WaitKindName(WaitKind kind);

struct Options {
  int device = 0;
  WaitKind p_wait = WaitKind::kMemOp;
  WaitKind q_wait = WaitKind::kMemOp;
  int warmup = 20;
  int iterations = 200;
};

// Round trips both sides enqueue before the gate opens; the launch queues of a stream hold
// about a thousand entries, and each round trip puts three on each side.
constexpr int kMaxRoundTrips = 300;

struct GpuMode {
  std::string name;
  bool mps_active = false;
  int compute_mode = 0;  // cudaComputeMode
};

StatusOr<GpuMode> Describe(int device);

// Told each step as it starts (progress lines, and the name a watchdog reports if the step
// never returns).
using Progress = std::function<void(const std::string&)>;

// Two streams of this process; microseconds per round trip. Every wait is bounded
// (DEADLINE_EXCEEDED); after one, resources a stuck stream still uses are left to the
// process exit, which the caller should do next.
StatusOr<double> TwoStreams(const Options& options, const Progress& progress);

// This process (side P) and a child process (side Q, `self_path` run with --role q and the
// flag allocation's IPC handle); microseconds per round trip. Bounded like TwoStreams.
StatusOr<double> TwoProcesses(const Options& options, const std::string& self_path,
                              const Progress& progress);

// Side Q in the child: opens the flags, enqueues its steps, tells the parent through
// `ready_fd`, and waits (bounded) for its last step.
Status RunChildSide(const Options& options, const std::string& ipc_handle_hex, int ready_fd);

}  // namespace epd::bench::handoff
