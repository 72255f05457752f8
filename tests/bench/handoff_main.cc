// epd-handoff-bench: microseconds per GPU hand-off round trip between two processes (two
// CUDA contexts) and between two streams of one process, on one GPU (see handoff.h). The
// difference is what every op pays on the daemon-stream path without MPS.
//
//   epd-handoff-bench [--device 0] [--iterations 200] [--warmup 20] [--json FILE]
//
// Exit code 77 (skipped) without a GPU.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <fstream>

#include "tests/bench/gpu_util.h"
#include "tests/bench/handoff.h"
#include "tests/bench/process_util.h"

namespace epd::bench::handoff {
namespace {

constexpr int kSkipped = 77;

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
  app.add_option("--device", options.device, "CUDA device");
  app.add_option("--iterations", options.iterations, "timed round trips");
  app.add_option("--warmup", options.warmup, "round trips before the timed ones");
  app.add_option("--json", json_path, "also write the result as JSON (schema epd-handoff/1)");
  // Internal: the child side of the two-process measurement.
  app.add_option("--role", role)->group("")->check(CLI::IsMember({"p", "q"}));
  app.add_option("--ipc-handle", ipc_handle)->group("");
  app.add_option("--ready-fd", ready_fd)->group("");
  CLI11_PARSE(app, argc, argv);

  if (role == "q") {
    Status status = RunChildSide(options, ipc_handle, ready_fd);
    if (!status.ok()) {
      std::fprintf(stderr, "epd-handoff-bench (side Q): %s\n", status.ToString().c_str());
      return 1;
    }
    return 0;
  }
  if (gpu::DeviceCount() == 0) {
    std::fprintf(stderr, "epd-handoff-bench: no CUDA GPU; skipped\n");
    return kSkipped;
  }
  auto mode = Describe(options.device);
  if (!mode.ok()) {
    std::fprintf(stderr, "epd-handoff-bench: %s\n", mode.status().ToString().c_str());
    return 1;
  }
  auto streams = TwoStreams(options);
  auto processes = TwoProcesses(options, SelfPath());
  for (const auto* result : {&streams, &processes}) {
    if (!result->ok()) {
      std::fprintf(stderr, "epd-handoff-bench: %s\n", result->status().ToString().c_str());
      return 1;
    }
  }
  const std::string table = fmt::format(
      "GPU {} ({}), compute mode {}, MPS {}; {} round trips after {} warm-up\n\n"
      "| hand-off between | us per round trip | us per hand-off |\n|---|---|---|\n"
      "| two streams of one process | {:.1f} | {:.1f} |\n"
      "| two processes (two CUDA contexts) | {:.1f} | {:.1f} |\n",
      options.device, mode->name, ComputeModeName(mode->compute_mode),
      mode->mps_active ? "on" : "off", options.iterations, options.warmup, *streams,
      *streams / 2, *processes, *processes / 2);
  std::fputs(table.c_str(), stdout);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << fmt::format(
        "{{\"schema\": \"epd-handoff/1\", \"gpu\": \"{}\", \"device\": {}, \"mps_active\": {}, "
        "\"compute_mode\": \"{}\", \"iterations\": {}, \"warmup\": {}, "
        "\"two_streams_us_per_round_trip\": {:.3f}, \"two_processes_us_per_round_trip\": {:.3f}}}\n",
        mode->name, options.device, mode->mps_active ? "true" : "false",
        ComputeModeName(mode->compute_mode), options.iterations, options.warmup, *streams,
        *processes);
    if (!out) {
      std::fprintf(stderr, "epd-handoff-bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace epd::bench::handoff

int main(int argc, char** argv) { return epd::bench::handoff::Main(argc, argv); }
