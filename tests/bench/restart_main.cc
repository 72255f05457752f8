// epd-restart-bench: what a frontend restart costs, in fresh processes, side by side:
//
//   reattach  the group and every rank's named handle outlive the frontend in epd: the new
//             frontend connects, attaches its handle by name (the daemon allocates nothing),
//             maps it, registers its tensors and runs its first layer;
//   recreate  nothing outlives the frontend: the new one creates the group and its handle
//             again (the daemon allocates and sets them up, what an EP library inside the
//             frontend does on every restart) before the same first layer;
//   inproc    epd's backend made from scratch in one fresh process: GPU contexts of every
//             rank, kernels loaded, group, handles, first layer (a daemon's own cold start;
//             and what a frontend that owns its EP state in-process cannot skip).
//
//   epd-restart-bench [--backend auto|cuda|cpu] [--ranks R] [--tokens T] [--algorithm ll|ht]
//                     [--restarts N] [--json FILE]
//
// A restart starts one process per rank (inproc: one for all) and lasts until the slowest
// exits. Every process reports when it reached each phase, from its own main(): CUDA context,
// connected (session open), handle (created or attached), mapped (the handle's exported
// buffers), tensors (allocated, registered), inputs (made on the host and copied in: not a
// restart's cost; inproc makes them inside its first layer), first layer (update, dispatch,
// combine answered). The table shows medians over the restarts of the slowest rank, and of
// the wall time the coordinator saw (exec and exit included).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "client/epd/client.h"
#include "client/epd/handle_view.h"
#include "client/epd/tensor.h"
#include "client/examples/frontend_memory.h"
#include "client/examples/moe_math.h"
#include "common/align.h"
#include "tests/bench/backend_choice.h"
#include "tests/bench/inproc.h"
#include "tests/bench/process_util.h"
#if EPD_BENCH_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace epd::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Phases of one process, in milliseconds from its main(); written as "name value" lines.
using Phases = std::map<std::string, double>;

Status WritePhases(const std::string& path, const Phases& phases) {
  std::ofstream out(path);
  for (const auto& [name, ms] : phases) out << name << ' ' << ms << '\n';
  out.close();
  if (!out) return InternalError("cannot write the result file {}", path);
  return OkStatus();
}

StatusOr<Phases> ReadPhases(const std::string& path) {
  std::ifstream in(path);
  if (!in) return InternalError("no result file {} (the process failed; see its log)", path);
  Phases phases;
  std::string name;
  double ms = 0;
  while (in >> name >> ms) phases[name] = ms;
  return phases;
}

// A frontend rank's restart through the daemon: attach (or create) its handle, map it,
// register its tensors, make its inputs, run one blocking layer of T tokens. The session
// ends with the process, whether or not its peers' parts of the layer have ended.
StatusOr<Phases> RunFrontendRank(const example::Problem& problem, bool on_gpu,
                                 const std::string& address, const std::string& group, int rank,
                                 bool reattach, Clock::time_point start) {
  Phases phases;
#if EPD_BENCH_WITH_CUDA
  if (on_gpu) {
    // The process's CUDA context: every frontend pays it, with or without epd.
    if (cudaSetDevice(rank) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) {
      return InternalError("CUDA context on GPU {}: {}", rank,
                           cudaGetErrorString(cudaGetLastError()));
    }
    phases["cuda_context"] = MsSince(start);
  }
#endif
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Connect(address));
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<Session> session,
                       client->OpenSession(rank, fmt::format("restart-bench-{}", rank)));
  phases["connected"] = MsSince(start);

  StatusOr<v1::HandleInfo> handle = Status();
  if (reattach) {
    handle = session->AttachHandle(fmt::format("{}-r{}", group, rank));
  } else {
    StatusOr<v1::GroupConfig> created = session->CreateGroup(problem.Config(group));
    if (!created.ok() && created.status().code() == StatusCode::kAlreadyExists) {
      created = session->CreateGroup(problem.Config(group));  // another rank raced us
    }
    EPD_RETURN_IF_ERROR(created.status().WithContext("creating the group"));
    handle = session->CreateHandle(group);
  }
  EPD_RETURN_IF_ERROR(handle.status().WithContext("the handle"));
  phases["handle"] = MsSince(start);
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<HandleView> view, HandleView::Open(*handle));
  phases["mapped"] = MsSince(start);

  // x [T, H] | topk_idx [T, K] | weights [T, K] | out [T, H], one registered buffer.
  const size_t T = problem.max_tokens, K = problem.top_k;
  const size_t x_bytes = T * problem.row_bytes(), idx_offset = AlignUp(x_bytes);
  const size_t weights_offset = idx_offset + AlignUp(T * K * 4);
  const size_t out_offset = weights_offset + AlignUp(T * K * 4);
  const size_t total = out_offset + AlignUp(x_bytes);
  StatusOr<std::unique_ptr<example::FrontendMemory>> memory =
      on_gpu ? example::CreateDeviceMemory(total, rank) : example::CreateHostMemory(total);
  EPD_RETURN_IF_ERROR(memory.status().WithContext("the frontend's tensors"));
  EPD_ASSIGN_OR_RETURN(const uint64_t buffer, session->RegisterBuffer((*memory)->Source()));
  phases["tensors"] = MsSince(start);

  const example::RankInputs in =
      example::MakeInputs(problem, /*seed=*/1, rank, /*iteration=*/0, problem.max_tokens, false);
  EPD_RETURN_IF_ERROR((*memory)->Write(0, in.x.data(), in.x.size()));
  EPD_RETURN_IF_ERROR((*memory)->Write(idx_offset, in.topk_idx.data(), in.topk_idx.size() * 4));
  EPD_RETURN_IF_ERROR((*memory)->Write(weights_offset, in.weights.data(), in.weights.size() * 4));
  phases["inputs"] = MsSince(start);  // made on the host and copied: not a restart's cost
  const int n = in.num_tokens;
  const v1::OpOptions blocking = BlockingOptions();
  const uint64_t id = handle->handle_id();
  EPD_RETURN_IF_ERROR(
      session
          ->Update(id, MakeTensorRef(buffer, idx_offset, v1::DTYPE_INT32, {n, problem.top_k}),
                   MakeTensorRef(buffer, weights_offset, v1::DTYPE_FP32, {n, problem.top_k}),
                   blocking)
          .WithContext("update"));
  EPD_RETURN_IF_ERROR(
      session->Dispatch(id, MakeTensorRef(buffer, 0, problem.dtype, {n, problem.hidden}), blocking)
          .WithContext("dispatch"));
  EPD_RETURN_IF_ERROR(
      session
          ->Combine(id, MakeTensorRef(buffer, out_offset, problem.dtype, {n, problem.hidden}),
                    std::nullopt, blocking)
          .WithContext("combine"));
  phases["first_layer"] = MsSince(start);
  return phases;
}

// epd's backend from scratch in this process, one group of every rank, one layer.
StatusOr<Phases> RunInprocess(const example::Problem& problem, const std::string& backend,
                              Clock::time_point start) {
  Phases phases;
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<InprocRunner> runner,
                       InprocRunner::Create(backend, problem.ranks, {}, std::chrono::seconds(30)));
  phases["backend"] = MsSince(start);
  Case c;
  c.ranks = problem.ranks;
  c.hidden = problem.hidden;
  c.top_k = problem.top_k;
  c.experts = problem.experts;
  c.max_tokens = c.tokens = problem.max_tokens;
  c.algorithm = problem.high_throughput() ? Algorithm::kHighThroughput : Algorithm::kLowLatency;
  RunSettings once;
  once.warmup = 0;
  once.iterations = 1;
  once.check = false;
  const Result result = runner->Run(c, once);
  if (!result.error.empty()) return InternalError("in-process layer: {}", result.error);
  phases["first_layer"] = MsSince(start);
  return phases;
}

// The last few KB of a log, for an error message (the logs' folder goes with the daemon).
std::string Tail(const std::string& text) {
  constexpr size_t kKeep = 4000;
  return text.size() > kKeep ? text.substr(text.size() - kKeep) : text;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

constexpr const char* kVariants[] = {"reattach", "recreate", "inproc"};

// One restart of `variant`: a process per rank (inproc: one), spawned together; the slowest
// process's phases, plus "wall" from the first spawn to the last exit.
StatusOr<Phases> Restart(const std::string& variant, const example::Problem& problem,
                         const std::string& backend, const std::string& address,
                         const std::string& group, const std::string& dir, int index) {
  const int processes = variant == "inproc" ? 1 : problem.ranks;
  const std::string log = dir + "/processes.log";
  std::vector<pid_t> pids;
  std::vector<std::string> results;
  const auto spawned = Clock::now();
  for (int r = 0; r < processes; ++r) {
    results.push_back(fmt::format("{}/{}-{}-r{}.txt", dir, variant, index, r));
    std::vector<std::string> argv = {SelfPath(),
                                     "--child",
                                     variant,
                                     "--rank",
                                     std::to_string(r),
                                     "--result",
                                     results.back(),
                                     "--backend",
                                     backend,
                                     "--ranks",
                                     std::to_string(problem.ranks),
                                     "--tokens",
                                     std::to_string(problem.max_tokens),
                                     "--hidden",
                                     std::to_string(problem.hidden),
                                     "--experts",
                                     std::to_string(problem.experts),
                                     "--top-k",
                                     std::to_string(problem.top_k),
                                     "--algorithm",
                                     problem.high_throughput() ? "ht" : "ll",
                                     "--address",
                                     address,
                                     "--group",
                                     group};
    StatusOr<pid_t> pid = Spawn(argv, log);
    if (!pid.ok()) {
      for (pid_t started : pids) Terminate(started);
      return pid.status();
    }
    pids.push_back(*pid);
  }
  int failed = 0;
  for (pid_t pid : pids) {
    const int code = WaitFor(pid, std::chrono::minutes(2));
    if (code == -1) Terminate(pid);
    if (code != 0) ++failed;
  }
  Phases slowest;
  slowest["wall"] = MsSince(spawned);
  if (failed > 0) {
    std::ifstream in(log);
    std::stringstream output;
    output << in.rdbuf();
    return InternalError("{} restart {}: {} of {} processes failed; their output ends:\n{}",
                         variant, index, failed, processes, Tail(output.str()));
  }
  for (const std::string& path : results) {
    EPD_ASSIGN_OR_RETURN(const Phases phases, ReadPhases(path));
    for (const auto& [name, ms] : phases) slowest[name] = std::max(slowest[name], ms);
  }
  return slowest;
}

// The persistent group and every rank's named handle that `reattach` finds, made once.
Status MakePersistentHandles(Client& client, const example::Problem& problem,
                             const std::string& group) {
  const v1::GroupConfig config = problem.Config(group);
  for (int r = 0; r < problem.ranks; ++r) {
    EPD_ASSIGN_OR_RETURN(std::unique_ptr<Session> session,
                         client.OpenSession(r, "restart-bench-owner"));
    if (r == 0) EPD_RETURN_IF_ERROR(session->CreateGroup(config, /*persistent=*/true).status());
    EPD_RETURN_IF_ERROR(
        session->CreateHandle(group, fmt::format("{}-r{}", group, r), /*persistent=*/true)
            .status());
    EPD_RETURN_IF_ERROR(session->Close());
  }
  return OkStatus();
}

// Phases in the order a process goes through them.
constexpr const char* kPhaseOrder[] = {"cuda_context", "connected",   "handle",
                                       "mapped",       "tensors",     "inputs",
                                       "backend",      "first_layer", "wall"};

std::string Report(const example::Problem& problem, const std::string& device,
                   const std::map<std::string, std::vector<Phases>>& runs) {
  std::string text = fmt::format(
      "## epd-restart-bench: {}, {} rank(s), T {}, H {}, K {}, E {}, bf16, {}\n"
      "median ms since each process's main() (slowest rank) over {} restarts; wall = first "
      "spawn to last exit, seen by the coordinator\n| variant |",
      device, problem.ranks, problem.max_tokens, problem.hidden, problem.top_k, problem.experts,
      problem.high_throughput() ? "high-throughput" : "low-latency",
      runs.empty() ? 0 : runs.begin()->second.size());
  for (const char* phase : kPhaseOrder) text += fmt::format(" {} |", phase);
  text += "\n|---|";
  for (size_t i = 0; i < std::size(kPhaseOrder); ++i) text += "---|";
  for (const char* variant : kVariants) {
    const auto run = runs.find(variant);
    if (run == runs.end()) continue;
    text += fmt::format("\n| {} |", variant);
    for (const char* phase : kPhaseOrder) {
      std::vector<double> values;
      for (const Phases& p : run->second) {
        if (const auto at = p.find(phase); at != p.end()) values.push_back(at->second);
      }
      text += values.empty() ? " - |" : fmt::format(" {:.1f} |", Median(values));
    }
  }
  return text + "\n";
}

std::string Json(const example::Problem& problem, const std::string& backend,
                 const std::string& device,
                 const std::map<std::string, std::vector<Phases>>& runs) {
  std::string variants;
  for (const auto& [name, restarts] : runs) {
    std::string samples;
    for (const Phases& p : restarts) {
      std::string fields;
      for (const auto& [phase, ms] : p) {
        fields += fmt::format("{}\"{}\": {:.3f}", fields.empty() ? "" : ", ", phase, ms);
      }
      samples += fmt::format("{}{{{}}}", samples.empty() ? "" : ", ", fields);
    }
    variants += fmt::format("{}\"{}\": [{}]", variants.empty() ? "" : ", ", name, samples);
  }
  return fmt::format(
      "{{\"schema\": \"epd-restart-bench/1\", \"backend\": \"{}\", \"device\": \"{}\", "
      "\"ranks\": {}, \"tokens\": {}, \"hidden\": {}, \"top_k\": {}, \"experts\": {}, "
      "\"algorithm\": \"{}\", \"unit\": \"ms since the process's main()\", "
      "\"restarts\": {{{}}}}}\n",
      backend, device, problem.ranks, problem.max_tokens, problem.hidden, problem.top_k,
      problem.experts, problem.high_throughput() ? "high_throughput" : "low_latency", variants);
}

int RunCoordinator(example::Problem problem, std::string backend, int restarts,
                   const std::string& json_path) {
  const StatusOr<BackendChoice> choice = ChooseBackend(backend, problem.ranks);
  if (!choice.ok()) {
    fmt::print(stderr, "epd-restart-bench: {}\n", choice.status().message());
    return 2;
  }
  backend = choice->backend;
  problem.ranks = choice->ranks;
  std::vector<std::string> extra = {"--cpu-ranks", std::to_string(problem.ranks)};
  if (backend == "cuda") {
    std::string gpus;
    for (int r = 0; r < problem.ranks; ++r) gpus += fmt::format("{}{}", r == 0 ? "" : ",", r);
    extra = {"--gpus", gpus};
  }
  auto fail = [](const Status& status) {
    fmt::print(stderr, "epd-restart-bench: {}\n", status.ToString());
    return 1;
  };
  auto daemon = Daemon::Start(SelfDir() + "/epd", backend, extra, std::chrono::seconds(60));
  if (!daemon.ok()) return fail(daemon.status());
  const std::string dir = (*daemon)->log_path().substr(0, (*daemon)->log_path().rfind('/'));
  auto client = Client::Connect((*daemon)->address());
  if (!client.ok()) return fail(client.status());
  auto node = (*client)->GetNodeInfo();
  if (!node.ok()) return fail(node.status());
  const std::string device = node->gpus_size() > 0 ? node->gpus(0).name() : "cpu backend";
  const std::string kept = "restart-kept";
  if (Status made = MakePersistentHandles(**client, problem, kept); !made.ok()) return fail(made);

  // Restarts of the three variants take turns, so that drift of the host hits all alike; the
  // first round warms what any process start warms (page cache, the daemon's kernels).
  std::map<std::string, std::vector<Phases>> runs;
  for (int i = -1; i < restarts; ++i) {
    for (const char* variant : kVariants) {
      const std::string group =
          std::string(variant) == "reattach" ? kept : fmt::format("restart-new-{}", i + 1);
      auto phases = Restart(variant, problem, backend, (*daemon)->address(), group, dir, i + 1);
      if (!phases.ok()) {
        return fail(phases.status().WithContext(
            fmt::format("the daemon's log ends:\n{}", Tail((*daemon)->ReadLog()))));
      }
      if (i >= 0) runs[variant].push_back(*phases);
    }
  }
  const std::string report = Report(problem, device, runs);
  std::fputs(report.c_str(), stdout);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << Json(problem, backend, device, runs);
    if (!out) return fail(InternalError("cannot write {}", json_path));
  }
  return 0;
}

}  // namespace
}  // namespace epd::bench

int main(int argc, char** argv) {
  using namespace epd::bench;
  const auto start = Clock::now();
  // The standard shape, bf16; ranks 0: every GPU (2 on the cpu backend).
  epd::example::Problem problem;
  problem.ranks = 0;
  problem.experts = 256;
  problem.hidden = 7168;
  problem.max_tokens = 128;
  problem.top_k = 8;
  problem.dtype = epd::v1::DTYPE_BF16;
  std::string backend = "auto", algorithm = "ll", json_path, child, address, group, result;
  int restarts = 10, rank = 0;
  CLI::App app{"epd-restart-bench: what a frontend restart costs with and without epd"};
  app.add_option("--backend", backend, "auto, cuda or cpu")->capture_default_str();
  app.add_option("--ranks", problem.ranks, "ranks (default: every GPU; 2 on cpu)");
  app.add_option("--tokens", problem.max_tokens, "T: max tokens per rank")->capture_default_str();
  app.add_option("--hidden", problem.hidden)->capture_default_str();
  app.add_option("--experts", problem.experts)->capture_default_str();
  app.add_option("--top-k", problem.top_k)->capture_default_str();
  app.add_option("--algorithm", algorithm, "ll or ht")
      ->check(CLI::IsMember({"ll", "ht"}))
      ->capture_default_str();
  app.add_option("--restarts", restarts, "restarts per variant")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--json", json_path, "write the results as JSON here");
  // Internal: a restarted process.
  app.add_option("--child", child)
      ->group("")
      ->check(CLI::IsMember({"reattach", "recreate", "inproc"}));
  app.add_option("--rank", rank)->group("");
  app.add_option("--address", address)->group("");
  app.add_option("--group", group)->group("");
  app.add_option("--result", result)->group("");
  CLI11_PARSE(app, argc, argv);
  problem.algorithm =
      algorithm == "ht" ? epd::v1::ALGORITHM_HIGH_THROUGHPUT : epd::v1::ALGORITHM_LOW_LATENCY;

  if (!child.empty()) {
    epd::StatusOr<Phases> phases = child == "inproc"
                                       ? RunInprocess(problem, backend, start)
                                       : RunFrontendRank(problem, backend == "cuda", address, group,
                                                         rank, child == "reattach", start);
    const epd::Status status = phases.ok() ? WritePhases(result, *phases) : phases.status();
    if (!status.ok()) {
      fmt::print(stderr, "epd-restart-bench {} rank {}: {}\n", child, rank, status.ToString());
      return 1;
    }
    return 0;
  }
  return RunCoordinator(problem, backend, restarts, json_path);
}
