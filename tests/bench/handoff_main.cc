// epd-handoff-bench: microseconds per GPU hand-off round trip between two processes (two
// CUDA contexts) and between two streams of one process, on one GPU (see handoff.h). The
// difference is what every op pays on the daemon-stream path without MPS.
//
//   epd-handoff-bench [--device 0] [--iterations 200] [--warmup 20] [--json FILE]
//                     [--timeout-s 90] [--p-wait memop|spin] [--q-wait memop|spin]
//
// Progress goes to stderr, a line per step; the table to stdout at the end. Exit codes: 0,
// 1 on an error (named on stderr), 3 when the whole run passes --timeout-s (a CUDA call that
// never returns; the step it was in is named), 77 (skipped) without a GPU.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "tests/bench/gpu_util.h"
#include "tests/bench/handoff.h"
#include "tests/bench/process_util.h"
#include "tests/bench/watchdog.h"

namespace epd::bench::handoff {
namespace {

constexpr int kSkipped = 77;
// Above the bounded waits of one run added up (handoff.cu), below the 120 s a caller's
// `timeout` or the ctest entry allows, so a stuck run always says where it stuck.
constexpr int kDefaultTimeoutS = 90;

// NOTE: _exit after a failure: a stream may still wait on a flag that never comes, and the
// CUDA runtime's exit-time teardown would wait on it.
[[noreturn]] void Fail(const char* side, const Status& status) {
  std::fprintf(stderr, "epd-handoff-bench%s: %s\n", side, status.ToString().c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(1);
}

std::string ComputeModeName(int mode) {
  switch (mode) {
    case 0:
      return "default";
    case 2:
      return "prohibited";
    case 3:
      return "exclusive-process";
    default:
      return fmt::format("mode-{}", mode);
  }
}

int Main(int argc, char** argv) {
  CLI::App app{"GPU hand-off round trips: two processes vs two streams of one process"};
  Options options;
  std::string role = "p", ipc_handle, json_path;
  int ready_fd = -1;
  int timeout_s = kDefaultTimeoutS;
  app.add_option("--device", options.device, "CUDA device");
  app.add_option("--iterations", options.iterations, "timed round trips");
  app.add_option("--warmup", options.warmup, "round trips before the timed ones");
  app.add_option("--json", json_path, "also write the result as JSON (schema epd-handoff/1)");
  const std::map<std::string, WaitKind> kinds{{"memop", WaitKind::kMemOp},
                                              {"spin", WaitKind::kSpin}};
  app.add_option("--p-wait", options.p_wait, "how side P (the frontend's part) waits")
      ->transform(CLI::CheckedTransformer(kinds));
  app.add_option("--q-wait", options.q_wait, "how side Q (the daemon's part) waits")
      ->transform(CLI::CheckedTransformer(kinds));
  app.add_option("--timeout-s", timeout_s, "give up (exit 3) when the whole run takes longer")
      ->check(CLI::Range(1, 3600));
  // Internal: the child side of the two-process measurement.
  app.add_option("--role", role)->group("")->check(CLI::IsMember({"p", "q"}));
  app.add_option("--ipc-handle", ipc_handle)->group("");
  app.add_option("--ready-fd", ready_fd)->group("");
  CLI11_PARSE(app, argc, argv);

  // Progress must reach a log even when the run is killed: stderr unbuffered.
  std::setvbuf(stderr, nullptr, _IONBF, 0);
  const std::chrono::milliseconds limit(static_cast<int64_t>(timeout_s) * 1000);

  if (role == "q") {
    Watchdog watchdog("epd-handoff-bench (side Q)", limit);
    watchdog.Phase("side Q: opening the flags and enqueueing its steps");
    Status status = RunChildSide(options, ipc_handle, ready_fd);
    if (!status.ok()) Fail(" (side Q)", status);
    return 0;
  }
  Watchdog watchdog("epd-handoff-bench", limit);
  watchdog.Phase("looking for a CUDA GPU");
  if (gpu::DeviceCount() == 0) {
    std::fprintf(stderr, "epd-handoff-bench: no CUDA GPU; skipped\n");
    return kSkipped;
  }
  auto mode = Describe(options.device);
  if (!mode.ok()) Fail("", mode.status());
  watchdog.Phase(fmt::format("GPU {} ({}), MPS {}", options.device, mode->name,
                             mode->mps_active ? "on" : "off"));
  const Progress progress = [&watchdog](const std::string& step) { watchdog.Phase(step); };
  // One at a time: after a failed measurement the context may hold a stuck stream.
  auto streams = TwoStreams(options, progress);
  if (!streams.ok()) Fail("", streams.status());
  watchdog.Phase(fmt::format("two streams: {:.1f} us per round trip", *streams));
  auto processes = TwoProcesses(options, SelfPath(), progress);
  if (!processes.ok()) Fail("", processes.status());
  watchdog.Phase(fmt::format("two processes: {:.1f} us per round trip", *processes));
  const std::string table = fmt::format(
      "GPU {} ({}), compute mode {}, MPS {}; waits: P {}, Q {}; {} round trips after {} "
      "warm-up\n\n"
      "| hand-off between | us per round trip | us per hand-off |\n|---|---|---|\n"
      "| two streams of one process | {:.1f} | {:.1f} |\n"
      "| two processes (two CUDA contexts) | {:.1f} | {:.1f} |\n",
      options.device, mode->name, ComputeModeName(mode->compute_mode),
      mode->mps_active ? "on" : "off", WaitKindName(options.p_wait), WaitKindName(options.q_wait),
      options.iterations, options.warmup, *streams,
      *streams / 2, *processes, *processes / 2);
  std::fputs(table.c_str(), stdout);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << fmt::format(
        "{{\"schema\": \"epd-handoff/1\", \"gpu\": \"{}\", \"device\": {}, \"mps_active\": {}, "
        "\"compute_mode\": \"{}\", \"p_wait\": \"{}\", \"q_wait\": \"{}\", \"iterations\": {}, "
        "\"warmup\": {}, "
        "\"two_streams_us_per_round_trip\": {:.3f}, \"two_processes_us_per_round_trip\": {:.3f}}}\n",
        mode->name, options.device, mode->mps_active ? "true" : "false",
        ComputeModeName(mode->compute_mode), WaitKindName(options.p_wait),
        WaitKindName(options.q_wait), options.iterations, options.warmup, *streams, *processes);
    if (!out) {
      std::fprintf(stderr, "epd-handoff-bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace epd::bench::handoff

int main(int argc, char** argv) { return epd::bench::handoff::Main(argc, argv); }
