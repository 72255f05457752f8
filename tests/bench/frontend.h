// Modes (b) and (c): one frontend process per rank talking to the daemon through epd_client.
//
// (b) daemon_fenced: each op is posted ahead (non-blocking, wait = go fence, signal = done
//     fence). On the cuda backend the frontend, once the daemon acknowledged the op (it is then
//     queued on the daemon's stream), queues [gate][start event][signal go][wait done][stop
//     event] on its own stream, meets the other frontends at a shared-memory barrier and opens
//     the gate: the span is GPU time from the fence signal to the fence wait. On the cpu
//     backend the same span is timed with the host clock (the daemon waits on the host there,
//     so the ack comes after the op and is awaited last).
// (c) daemon_blocking: blocking ops; host wall time of each call.
// (d) frontend_launched: the frontend launches the kernels itself (FrontendOps) on its stream;
//     [gate][start event][op][stop event], the gate opened together: GPU time of the op as
//     the frontend's context runs it (cuda backend only; it runs last on each case's handle,
//     since the daemon refuses a group's ops once frontends launch them).
//
// Every frontend runs the same case list in lockstep and appends its samples to a result
// file that the coordinating epd-bench merges (ReadFrontendResults).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "tests/bench/bench_case.h"
#include "tests/bench/inproc.h"

namespace epd::bench {

struct FrontendOptions {
  int rank = 0;
  int ranks = 0;
  std::string address;       // the daemon
  int session_rank = -1;     // the rank the session binds on that daemon; -1: rank
  int device = -1;           // cuda: the GPU of its tensors, as it numbers them; -1: rank
  bool spans_nodes = false;  // the ranks are spread over daemons: groups span them
  std::string barrier_name;  // ShmBarrier::Create by the coordinator
  std::string result_path;   // this frontend's sample file
  std::string group_prefix = "bench";  // groups are named <prefix>-<case index>
  bool fenced = true;
  bool blocking = true;
  bool frontend_launched = false;  // cuda backend: FrontendOps, after the daemon modes
  int control_iterations = 200;  // rank 0: GetNodeInfo and no-op op round trips
};

// The body of `epd-bench --frontend-rank R ...`; returns the process exit code.
int RunFrontend(const FrontendOptions& options, const std::vector<Case>& cases,
                const RunSettings& settings);

// What the frontends wrote, turned into Results (one per case and daemon mode) plus the
// control-plane round trips measured by rank 0.
struct FrontendResults {
  std::vector<Result> results;
  std::map<std::string, OpSummary> control;
  std::string backend;  // as the daemon reported it
  std::vector<std::string> devices;
  std::string nccl_version;
};
StatusOr<FrontendResults> ReadFrontendResults(const std::vector<std::string>& paths,
                                              const std::vector<Case>& cases, int ranks);

}  // namespace epd::bench
