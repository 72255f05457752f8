// epd_example_frontend: R frontend processes (one per rank) run a MoE layer through one epd
// daemon and check every output element bit for bit against their own computation.
//
//   epd --backend cpu --cpu-ranks 2 --listen unix:///tmp/epd.sock &
//   epd_example_frontend --address unix:///tmp/epd.sock --ranks 2 --layout expert_major
//
// Each rank: Update -> Dispatch -> expert (rows of expert e scaled by e + 1, in place in the
// handle's receive buffer) -> Combine, for --iterations layers with varying token counts,
// alternating blocking and fenced ops (--mode). Exit status 0 only when every rank matched.
// --dispatch-dtype fp8 (bf16, H a multiple of 128): dispatch moves e4m3 rows with a scale per
// 128 channels (--scale-format fp32 or ue8m0), quantized by the daemon, or by this frontend
// with --prequantized; the experts read the dequantized rows and write bf16 expert outputs.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "client/examples/rank_runner.h"

namespace {

using epd::example::Problem;

struct Flags {
  std::string address = "unix:///run/epd/epd.sock";
  int ranks = 2;
  int tokens = 16;
  int hidden = 128;
  int experts = 0;
  int top_k = 0;
  std::string layout = "expert_major";
  std::string algorithm = "low_latency";
  std::string dtype = "bf16";
  std::string dispatch_dtype = "token";
  std::string scale_format = "fp32";
  bool prequantized = false;
  std::string idx = "int32";
  std::string mode = "both";
  int iterations = 4;
  std::string group;
  uint64_t seed = 1;
  bool progress = false;
  bool graphs = false;
};

// Removes the shared memory a rank process left when a signal stopped it before its
// destructors ran: its objects are named "/epd-client-<pid>-..." (shared_memory.h).
void RemoveSharedMemoryOf(pid_t pid) {
  const std::string prefix = fmt::format("epd-client-{}-", pid);
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) shm_unlink(("/" + name).c_str());
  }
}

int RunRank(const Flags& flags, const Problem& problem, int rank) {
  const auto start = std::chrono::steady_clock::now();
  std::printf("rank %d: pid %d\n", rank, static_cast<int>(getpid()));
  std::fflush(stdout);
  auto fail = [rank](const epd::Status& status) {
    std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, status.ToString().c_str());
    return 1;
  };
  auto client = epd::Client::Connect(flags.address);
  if (!client.ok()) return fail(client.status());
  epd::example::RankRunnerOptions options;
  options.group = flags.group;
  options.int64_topk = flags.idx == "int64";
  options.frontend_launched = flags.mode == "frontend";
  options.graphs = flags.graphs;
  auto runner = epd::example::RankRunner::Create(**client, problem, rank, options);
  if (!runner.ok()) return fail(runner.status());
  std::string tokens;
  for (int it = 0; it < flags.iterations; ++it) {
    // Graphs fix the token count: every layer has T tokens (new values each layer).
    const int n = flags.graphs ? problem.max_tokens : epd::example::TokensFor(problem, rank, it);
    const bool fenced = flags.mode == "fenced" || (flags.mode == "both" && it % 2 == 1);
    const auto in = epd::example::MakeInputs(problem, flags.seed, rank, it, n, false);
    epd::Status status = (*runner)->RunAndCheck(in, epd::example::ScaleByExpertPlusOne, fenced);
    if (!status.ok()) return fail(status.WithContext(fmt::format("iteration {}", it)));
    if (flags.progress) {
      std::printf("rank %d: layer %d OK\n", rank, it);
      std::fflush(stdout);
    }
    tokens += fmt::format("{}{}{}", it == 0 ? "" : ",", n,
                          flags.graphs && it > 0 ? "g" : options.frontend_launched ? "l" : fenced ? "f" : "b");
  }
  // Layer 0 runs eagerly, layer 1 captures, every later layer replays.
  const int replays = std::max(0, flags.iterations - 2);
  if (flags.graphs && (*runner)->replayed_layers() != replays) {
    return fail(epd::InternalError("{} of {} layers replayed captured graphs, expected {}",
                                   (*runner)->replayed_layers(), flags.iterations, replays));
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  std::printf("rank %d: %d layers OK, bit-exact (tokens %s; b=blocking f=fenced l=frontend-launched g=CUDA graph) in %lld ms\n",
              rank, flags.iterations, tokens.c_str(), static_cast<long long>(ms));
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"epd example frontend: R processes run dispatch -> expert -> combine"};
  app.add_option("--address", flags.address, "daemon address (unix:///path or host:port)");
  app.add_option("--ranks", flags.ranks, "R: frontend processes, one per node rank")
      ->check(CLI::Range(1, 64));
  app.add_option("--tokens", flags.tokens, "T: max tokens per rank")->check(CLI::Range(1, 65536));
  app.add_option("--hidden", flags.hidden, "H: hidden size (multiple of 8)");
  app.add_option("--experts", flags.experts, "E: experts (default 4 * R)");
  app.add_option("--topk", flags.top_k, "K: experts per token (default min(4, E))");
  app.add_option("--layout", flags.layout)->check(CLI::IsMember({"expert_major", "rank_major"}));
  app.add_option("--algorithm", flags.algorithm,
                 "low_latency or high_throughput (packed rows; the layout is its own)")
      ->check(CLI::IsMember({"low_latency", "high_throughput"}));
  app.add_option("--dtype", flags.dtype)->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  app.add_option("--dispatch-dtype", flags.dispatch_dtype,
                 "token (the token dtype) or fp8 (e4m3 + a scale per 128 channels)")
      ->check(CLI::IsMember({"token", "fp8", "fp8_e4m3"}));
  app.add_option("--scale-format", flags.scale_format, "fp8 block scales")
      ->check(CLI::IsMember({"fp32", "ue8m0"}));
  app.add_flag("--prequantized", flags.prequantized,
               "fp8: quantize x here and pass x_scales (else the daemon quantizes bf16 x)");
  app.add_option("--idx", flags.idx, "topk_idx dtype")->check(CLI::IsMember({"int32", "int64"}));
  app.add_option("--mode", flags.mode,
                 "blocking, fenced, both (alternating): the daemon's streams; frontend: this "
                 "process launches the kernels (frontend-launched data path, cuda backend)")
      ->check(CLI::IsMember({"blocking", "fenced", "both", "frontend"}));
  app.add_option("--iterations", flags.iterations)->check(CLI::Range(1, 100000));
  app.add_option("--group", flags.group, "group name (default: derived from the shape)");
  app.add_option("--seed", flags.seed);
  app.add_flag("--progress", flags.progress, "print a line after every checked layer");
  app.add_flag("--graphs", flags.graphs,
               "frontend mode: after an eager first layer, capture the second layer's ops in "
               "CUDA graphs and replay them for every later layer (T tokens each, new values "
               "each layer)");
  CLI11_PARSE(app, argc, argv);

  Problem problem;
  problem.ranks = flags.ranks;
  problem.experts = flags.experts > 0 ? flags.experts : 4 * flags.ranks;
  problem.hidden = flags.hidden;
  problem.max_tokens = flags.tokens;
  problem.top_k = flags.top_k > 0 ? flags.top_k : std::min(4, problem.experts);
  problem.dtype = flags.dtype == "fp16"   ? epd::v1::DTYPE_FP16
                  : flags.dtype == "fp32" ? epd::v1::DTYPE_FP32
                                          : epd::v1::DTYPE_BF16;
  problem.layout =
      flags.layout == "rank_major" ? epd::v1::LAYOUT_RANK_MAJOR : epd::v1::LAYOUT_EXPERT_MAJOR;
  problem.algorithm = flags.algorithm == "high_throughput" ? epd::v1::ALGORITHM_HIGH_THROUGHPUT
                                                           : epd::v1::ALGORITHM_LOW_LATENCY;
  problem.fp8 = flags.dispatch_dtype != "token";
  problem.scale_format =
      flags.scale_format == "ue8m0" ? epd::v1::SCALE_FORMAT_UE8M0 : epd::v1::SCALE_FORMAT_FP32;
  problem.prequantized = flags.prequantized;
  if (flags.graphs && flags.mode != "frontend") {
    std::fprintf(stderr, "--graphs needs --mode frontend\n");
    return 2;
  }
  if (flags.prequantized && !problem.fp8) {
    std::fprintf(stderr, "--prequantized needs --dispatch-dtype fp8\n");
    return 2;
  }
  const std::string payload =
      problem.fp8 ? fmt::format("fp8-{}{}", flags.scale_format, flags.prequantized ? "-pre" : "")
                  : flags.dtype;
  if (flags.group.empty()) {
    flags.group = fmt::format("example-{}-{}-{}-{}-r{}-e{}-h{}-t{}-k{}", flags.algorithm,
                              flags.layout, flags.dtype,
                              problem.fp8 ? "fp8-" + flags.scale_format : "tok", problem.ranks,
                              problem.experts, problem.hidden, problem.max_tokens, problem.top_k);
  }

  // NOTE: fork before any gRPC state exists in this process; each child makes its own.
  std::vector<pid_t> children;
  for (int rank = 0; rank < flags.ranks; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) _exit(RunRank(flags, problem, rank));
    children.push_back(pid);
  }
  int failed = 0;
  for (size_t done = 0; done < children.size(); ++done) {
    int wstatus = 0;
    const pid_t pid = wait(&wstatus);
    if (pid < 0) break;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      ++failed;
      RemoveSharedMemoryOf(pid);
      // A rank that failed leaves its peers waiting in a collective: stop them now.
      for (pid_t other : children) {
        if (other != pid) kill(other, SIGTERM);
      }
    }
  }
  std::printf("%s: %d ranks, %s, %s, T=%d H=%d E=%d K=%d, %d layers: %s\n", argv[0], flags.ranks,
              flags.layout.c_str(), payload.c_str(), problem.max_tokens, problem.hidden,
              problem.experts, problem.top_k, flags.iterations,
              failed == 0 ? "all ranks OK" : "FAILED");
  return failed == 0 ? 0 : 1;
}
