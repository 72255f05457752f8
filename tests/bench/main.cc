// epd-bench: dispatch / combine of the epd daemon measured against the alternatives, in one
// run. See tests/bench/README.md for what each mode measures and the command lines of a GPU
// host.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/bench/backend_choice.h"
#include "tests/bench/bench_case.h"
#include "tests/bench/daemons.h"
#include "tests/bench/frontend.h"
#include "tests/bench/inproc.h"
#include "tests/bench/process_util.h"
#include "tests/bench/rank_devices.h"
#include "tests/bench/report.h"
#if EPD_BENCH_WITH_CUDA
#include "tests/bench/gpu_util.h"
#endif
#if EPD_BENCH_WITH_NCCL
#include "tests/bench/nccl_baseline.h"
#endif

namespace epd::bench {
namespace {

std::vector<std::string> Split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

StatusOr<std::vector<int>> SplitInts(const std::string& text, const char* what) {
  std::vector<int> out;
  for (const std::string& item : Split(text)) {
    try {
      out.push_back(std::stoi(item));
    } catch (...) {
      return InvalidArgumentError("{}: '{}' is not an integer", what, item);
    }
  }
  return out;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

struct Flags {
  std::string backend = "auto";
  int ranks = 0;
  bool smoke = false;
  bool sweep = false;
  std::string modes = "inproc,fenced,blocking,frontend,nccl";
  std::string tokens = "128", hidden = "7168", layouts = "expert", routings = "random,skewed";
  int top_k = 8, experts = 256, capacity = 0, sm_budget = 0;
  std::string dtype = "bf16", algorithm = "ll";
  std::string dispatch_dtypes = "token", scale_format = "fp32";
  uint64_t seed = 1;
  int hot_experts = 8, hot_percent = 50;
  int warmup = 10, iterations = 100, control_iterations = 200;
  bool no_check = false;
  int op_timeout_ms = 30'000;
  int frontend_timeout_s = 3600;
  int nodes = 1;
  bool network_path = false;
  std::string json_path, epd_path, connect, gpus;
  std::vector<std::string> epd_args;
  std::string torch_python, torch_script;
};

// Modes (b), (c) and (d): the daemons (started here unless --connect; one, or --nodes of them
// forming one deployment) and one frontend per rank.
StatusOr<FrontendResults> RunDaemonModes(const Flags& flags, const std::string& backend,
                                         int ranks, const std::vector<Case>& cases,
                                         bool fenced, bool blocking, bool frontend_launched) {
  std::unique_ptr<BenchDaemons> daemons;
  if (!flags.connect.empty()) {
    daemons = BenchDaemons::Connect(flags.connect);
  } else {
    DaemonsOptions options;
    options.epd_path = flags.epd_path.empty() ? SelfDir() + "/epd" : flags.epd_path;
    options.backend = backend;
    options.ranks = ranks;
    options.nodes = flags.nodes;
    options.network_path = flags.network_path;
#if EPD_BENCH_WITH_CUDA
    if (backend == "cuda") options.visible_gpus = gpu::DeviceCount();
#endif
    options.extra = {"--op-timeout-ms", std::to_string(flags.op_timeout_ms)};
    options.extra.insert(options.extra.end(), flags.epd_args.begin(), flags.epd_args.end());
    EPD_ASSIGN_OR_RETURN(daemons, BenchDaemons::Start(options));
  }
  std::string dir = "/tmp/epd-bench-fe-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) return InternalError("mkdtemp failed");
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      if (std::getenv("EPD_BENCH_KEEP_DIR") == nullptr) {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
      }
    }
  } remove_dir{dir};
  const std::string cases_path = dir + "/cases.txt";
  std::ofstream(cases_path) << SerializeCases(cases);
  EPD_ASSIGN_OR_RETURN(auto barrier, ShmBarrier::Create(ranks));

  const std::string frontend = SelfDir() + "/epd-bench-frontend";
  std::vector<pid_t> pids;
  std::vector<std::string> results, logs;
  for (int r = 0; r < ranks; ++r) {
    results.push_back(fmt::format("{}/rank{}.txt", dir, r));
    logs.push_back(fmt::format("{}/rank{}.log", dir, r));
    const FrontendSeat seat = daemons->SeatOf(r);
    std::vector<std::string> argv = {
        frontend, "--rank", std::to_string(r), "--ranks", std::to_string(ranks),
        "--connect", seat.address, "--session-rank", std::to_string(seat.session_rank),
        "--device", std::to_string(seat.device), "--barrier", barrier->name(),
        "--result", results.back(),
        "--cases", cases_path, "--group-prefix", fmt::format("bench-{}", getpid()),
        "--modes", std::string(fenced ? "fenced," : "") + (blocking ? "blocking," : "") +
                       (frontend_launched ? "frontend" : ""),
        "--warmup", std::to_string(flags.warmup), "--iterations", std::to_string(flags.iterations),
        "--op-timeout-ms", std::to_string(flags.op_timeout_ms),
        "--control-iterations", std::to_string(flags.control_iterations)};
    if (flags.no_check) argv.push_back("--no-check");
    if (daemons->spanning()) argv.push_back("--spans-nodes");
    std::map<std::string, std::string> env;
    if (!seat.visible_devices.empty()) env["CUDA_VISIBLE_DEVICES"] = seat.visible_devices;
    ScopedEnv scoped(env);
    auto pid = Spawn(argv, logs.back());
    if (!pid.ok()) {
      for (pid_t p : pids) Terminate(p);
      return pid.status();
    }
    pids.push_back(*pid);
  }
  Status failed;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(flags.frontend_timeout_s);
  for (int r = 0; r < ranks; ++r) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int code = WaitFor(pids[r], std::max(left, std::chrono::milliseconds(1)));
    if (code != 0) {
      if (code < 0) Terminate(pids[r]);
      if (failed.ok()) {
        failed = InternalError("frontend {} exited with {}; its log:\n{}", r, code, ReadText(logs[r]));
      }
    }
  }
  if (!failed.ok()) {
    fmt::print(stderr, "epd-bench: {}\n", failed.ToString());
    fmt::print(stderr, "epd-bench: daemon log:\n{}\n", daemons->ReadLogs());
  }
  auto merged = ReadFrontendResults(results, cases, ranks);
  if (!merged.ok() && !failed.ok()) return failed;
  const bool case_failed =
      merged.ok() && std::any_of(merged->results.begin(), merged->results.end(),
                                 [](const Result& r) { return !r.error.empty(); });
  if (failed.ok() && case_failed) {  // why a case failed is often only in the daemon's log
    fmt::print(stderr, "epd-bench: a case failed; daemon log:\n{}\n", daemons->ReadLogs());
  }
  return merged;
}

int Main(int argc, char** argv) {
  Flags f;
  CLI::App app{"epd-bench: MoE dispatch/combine of epd in-process, through the daemon "
               "(fenced, blocking) and against NCCL / torch baselines"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--backend", f.backend, "auto, cuda or cpu")->capture_default_str();
  app.add_option("--ranks", f.ranks, "ranks (default: every GPU; 2 on cpu)");
  app.add_flag("--smoke", f.smoke, "small sizes, few iterations (CI on the cpu backend)");
  app.add_flag("--sweep", f.sweep,
               "tokens/rank 1..8192 at H 7168 and H 2048..8192 at 128 tokens; low-latency in "
               "both layouts and high-throughput");
  app.add_option("--modes", f.modes,
                 "inproc,fenced,blocking,frontend,nccl (frontend: frontend-launched, cuda only)")
      ->capture_default_str();
  app.add_option("--tokens", f.tokens, "tokens per rank, comma-separated")->capture_default_str();
  app.add_option("--hidden", f.hidden, "hidden sizes, comma-separated")->capture_default_str();
  app.add_option("--layouts", f.layouts, "expert,rank")->capture_default_str();
  app.add_option("--routings", f.routings, "random,skewed")->capture_default_str();
  app.add_option("--top-k", f.top_k)->capture_default_str();
  app.add_option("--experts", f.experts)->capture_default_str();
  app.add_option("--dtype", f.dtype, "bf16, fp16 or fp32")->capture_default_str();
  app.add_option("--dispatch-dtype", f.dispatch_dtypes,
                 "dispatch payloads, comma-separated: token (the token dtype), fp8 (e4m3 + a "
                 "scale per 128 channels, quantized by epd from bf16 x), fp8-pre (quantized by "
                 "the frontend, passed with x_scales)")
      ->capture_default_str();
  app.add_option("--scale-format", f.scale_format,
                 "fp8 block scales, comma-separated: fp32, ue8m0 (each fp8 payload runs once per "
                 "format, in the same run)")
      ->capture_default_str();
  app.add_option("--algorithm", f.algorithm,
                 "low-latency (ll), high-throughput (ht) or auto (high-throughput from 1024 "
                 "tokens per rank)")
      ->capture_default_str();
  app.add_option("--capacity", f.capacity, "rows per expert; 0 = R * T")->capture_default_str();
  app.add_option("--sm-budget", f.sm_budget,
                 "high-throughput: SMs its kernels use; 0 = the daemon's default (24)")
      ->capture_default_str();
  app.add_option(
      "--gpus", f.gpus,
      "in-process mode: GPU of each rank, comma-separated (default: rank r on GPU r); "
      "0,0 runs two ranks on one GPU, each on half its SMs: the kernels' own cost at R = 2, "
      "no NVLink");
  app.add_option("--seed", f.seed)->capture_default_str();
  app.add_option("--hot-experts", f.hot_experts, "skewed routing: experts 0..N-1 are hot")
      ->capture_default_str();
  app.add_option("--hot-percent", f.hot_percent, "skewed routing: % of picks from the hot set")
      ->check(CLI::Range(0, 99))->capture_default_str();
  app.add_option("--warmup", f.warmup)->capture_default_str();
  app.add_option("--iterations", f.iterations)->capture_default_str();
  app.add_option("--control-iterations", f.control_iterations)->capture_default_str();
  app.add_flag("--no-check", f.no_check, "skip the combine output check");
  app.add_option("--op-timeout-ms", f.op_timeout_ms)->capture_default_str();
  app.add_option("--frontend-timeout-s", f.frontend_timeout_s)->capture_default_str();
  app.add_option("--json", f.json_path, "write the results as JSON here");
  app.add_option("--epd", f.epd_path, "the epd binary (default: next to epd-bench)");
  app.add_option("--epd-arg", f.epd_args, "extra flag for the started daemon (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->allow_extra_args(false);
  app.add_option("--connect", f.connect, "use a running daemon at this address instead");
  app.add_option("--nodes", f.nodes,
                 "daemon modes: start this many daemons as one deployment on this host (ranks / "
                 "nodes each; groups span them: NCCL between cuda daemons, gloo between cpu ones)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  app.add_flag("--network-path", f.network_path,
               "with --nodes on a host with a GPU per rank: NCCL's network transport between the "
               "daemons (P2P and SHM off), as between hosts");
  app.add_option("--torch-python", f.torch_python,
                 "python with torch: also run baselines/torch_all_to_all.py and merge its results");
  app.add_option("--torch-script", f.torch_script, "path of torch_all_to_all.py");
  CLI11_PARSE(app, argc, argv);

  if (f.smoke) {
    auto set = [&](const char* name, auto& field, auto value) {
      if (app.count(name) == 0) field = value;
    };
    set("--tokens", f.tokens, std::string("16"));
    set("--hidden", f.hidden, std::string("256"));
    set("--layouts", f.layouts, std::string("expert,rank"));
    set("--dispatch-dtype", f.dispatch_dtypes, std::string("token,fp8,fp8-pre"));
    set("--scale-format", f.scale_format, std::string("fp32,ue8m0"));
    set("--top-k", f.top_k, 4);
    set("--experts", f.experts, 8);
    set("--hot-experts", f.hot_experts, 2);
    set("--warmup", f.warmup, 2);
    set("--iterations", f.iterations, 10);
    set("--control-iterations", f.control_iterations, 20);
    set("--op-timeout-ms", f.op_timeout_ms, 10'000);
  }
  const StatusOr<BackendChoice> choice = ChooseBackend(f.backend, f.ranks);
  if (!choice.ok()) {
    fmt::print(stderr, "epd-bench: {}\n", choice.status().message());
    return 2;
  }
  const std::string backend = choice->backend;
  const int ranks = choice->ranks;

  CaseListOptions list;
  list.ranks = ranks;
  list.sweep = f.sweep;
  list.top_k = f.top_k;
  list.experts = f.experts;
  list.expert_capacity = f.capacity;
  list.sm_budget = f.sm_budget;
  list.routing.seed = f.seed;
  list.routing.hot_experts = f.hot_experts;
  list.routing.hot_percent = f.hot_percent;
  auto fail = [](const Status& s) {
    fmt::print(stderr, "epd-bench: {}\n", s.ToString());
    return 2;
  };
  std::vector<int> gpus;
  if (!f.gpus.empty()) {
    auto parsed = SplitInts(f.gpus, "--gpus");
    if (!parsed.ok()) return fail(parsed.status());
    if (static_cast<int>(parsed->size()) != ranks) {
      return fail(InvalidArgumentError("--gpus {} names {} GPUs for {} ranks", f.gpus,
                                       parsed->size(), ranks));
    }
    if (backend != "cuda") {
      return fail(InvalidArgumentError("--gpus {} places ranks on GPUs: the {} backend has none",
                                       f.gpus, backend));
    }
    gpus = std::move(*parsed);
  }
  auto tokens = SplitInts(f.tokens, "--tokens");
  auto hidden = SplitInts(f.hidden, "--hidden");
  if (!tokens.ok()) return fail(tokens.status());
  if (!hidden.ok()) return fail(hidden.status());
  list.tokens = *tokens;
  list.hidden = *hidden;
  list.layouts.clear();
  for (const std::string& l : Split(f.layouts)) {
    if (l == "expert" || l == "expert_major") list.layouts.push_back(Layout::kExpertMajor);
    else if (l == "rank" || l == "rank_major") list.layouts.push_back(Layout::kRankMajor);
    else return fail(InvalidArgumentError("--layouts: '{}' must be expert or rank", l));
  }
  list.routings.clear();
  for (const std::string& r : Split(f.routings)) {
    auto kind = ParseRouting(r);
    if (!kind.ok()) return fail(kind.status());
    list.routings.push_back(*kind);
  }
  auto dtype = ParseDType(f.dtype);
  if (!dtype.ok()) return fail(dtype.status());
  list.dtype = *dtype;
  list.payloads.clear();
  for (const std::string& name : Split(f.dispatch_dtypes)) {
    auto payload = ParsePayload(name == "fp8_e4m3" ? "fp8" : name);
    if (!payload.ok()) return fail(payload.status().WithContext("--dispatch-dtype"));
    list.payloads.push_back(*payload);
  }
  list.scale_formats.clear();
  for (const std::string& name : Split(f.scale_format)) {
    auto scale_format = ParseScaleFormat(name);
    if (!scale_format.ok()) return fail(scale_format.status().WithContext("--scale-format"));
    list.scale_formats.push_back(*scale_format);
  }
  if (list.scale_formats.empty()) {
    return fail(InvalidArgumentError("--scale-format: name at least one of fp32, ue8m0"));
  }
  if (f.algorithm == "auto") list.auto_algorithm = true;
  else if (f.algorithm == "ll" || f.algorithm == "low-latency") list.algorithm = Algorithm::kLowLatency;
  else if (f.algorithm == "ht" || f.algorithm == "high-throughput") list.algorithm = Algorithm::kHighThroughput;
  else return fail(InvalidArgumentError(
      "--algorithm '{}' must be low-latency, high-throughput or auto (or ll, ht)", f.algorithm));
  const std::vector<Case> cases = BuildCases(list);

  RunSettings settings;
  settings.warmup = f.warmup;
  settings.iterations = f.iterations;
  settings.check = !f.no_check;
  settings.op_timeout = std::chrono::milliseconds(f.op_timeout_ms);
  std::vector<std::string> modes = Split(f.modes);
  if (f.nodes > 1) {
    if (Status split = CheckNodeSplit(ranks, f.nodes); !split.ok()) return fail(split);
    if (!f.connect.empty()) {
      return fail(InvalidArgumentError("--nodes {} starts its own daemons: drop --connect {}",
                                       f.nodes, f.connect));
    }
    // Groups that span daemons run on the daemons' streams only.
    for (const char* mode : {"inproc", "frontend", "nccl"}) {
      const auto at = std::find(modes.begin(), modes.end(), mode);
      if (at == modes.end()) continue;
      fmt::print(stderr, "epd-bench: --nodes {}: no {} mode across daemons; skipped\n", f.nodes,
                 mode);
      modes.erase(at);
    }
  }
  auto want = [&](const char* mode) {
    return std::find(modes.begin(), modes.end(), mode) != modes.end();
  };

  RunInfo info;
  info.date = UtcNow();
  info.host = HostName();
  info.backend = backend;
  info.ranks = ranks;
  info.nodes = f.nodes;
  info.warmup = f.warmup;
  info.iterations = f.iterations;
  info.seed = f.seed;
#if EPD_BENCH_WITH_CUDA
  if (backend == "cuda") {
    for (int device : RankDevices(gpus, ranks)) info.devices.push_back(gpu::DeviceName(device));
  }
#endif
  std::vector<Result> results;
  std::map<std::string, OpSummary> control;
  auto progress = [&](const Result& r) {
    fmt::print(stderr, "epd-bench: [{}/{}] {} {}: {}\n", r.bench_case.index + 1, cases.size(),
               r.bench_case.Label(), r.mode, r.error.empty() ? "ok" : r.error);
  };

  if (want("inproc")) {
    auto runner = InprocRunner::Create(backend, ranks, gpus, settings.op_timeout);
    if (!runner.ok()) return fail(runner.status().WithContext("in-process backend"));
    for (const Case& c : cases) {
      results.push_back((*runner)->Run(c, settings));
      progress(results.back());
    }
  }
  if (want("fenced") || want("blocking") || want("frontend")) {
    auto merged = RunDaemonModes(f, backend, ranks, cases, want("fenced"), want("blocking"),
                                 want("frontend") && backend == "cuda");
    if (!merged.ok()) {
      fmt::print(stderr, "epd-bench: daemon modes failed: {}\n", merged.status().ToString());
      Result r;
      r.mode = "daemon";
      r.error = merged.status().ToString();
      if (!cases.empty()) r.bench_case = cases[0];
      results.push_back(r);
    } else {
      for (Result& r : merged->results) {
        progress(r);
        results.push_back(std::move(r));
      }
      control = merged->control;
      if (info.devices.empty()) info.devices = merged->devices;
      info.nccl_version = merged->nccl_version;
    }
  }
#if EPD_BENCH_WITH_NCCL
  if (want("nccl") && backend == "cuda") {
    auto baseline = NcclBaseline::Create(ranks);
    if (!baseline.ok()) {
      fmt::print(stderr, "epd-bench: NCCL baseline: {}\n", baseline.status().ToString());
    } else {
      if (info.nccl_version.empty()) info.nccl_version = (*baseline)->version();
      for (const Case& c : cases) {
        if (c.layout != Layout::kExpertMajor) continue;  // the baseline has no rank-major form
        if (c.fp8()) continue;  // nor an fp8 payload: its token-dtype case is the comparison
        results.push_back((*baseline)->Run(c, settings));
        progress(results.back());
      }
    }
  }
#endif
  // Table and JSON grouped by case, modes in a fixed order.
  auto mode_rank = [](const std::string& m) {
    const char* order[] = {kModeInproc,           kModeFenced, kModeBlocking,
                           kModeFrontendLaunched, kModeNccl,   kModeTorch};
    for (int i = 0; i < 6; ++i) {
      if (m == order[i]) return i;
    }
    return 6;
  };
  std::stable_sort(results.begin(), results.end(), [&](const Result& a, const Result& b) {
    if (a.bench_case.index != b.bench_case.index) return a.bench_case.index < b.bench_case.index;
    return mode_rank(a.mode) < mode_rank(b.mode);
  });

  std::string json_path = f.json_path;
  if (json_path.empty() && !f.torch_python.empty()) {
    json_path = fmt::format("/tmp/epd-bench-{}.json", getpid());
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path, std::ios::out | std::ios::trunc);
    out << ToJson(info, control, results);
    if (!out) return fail(InternalError("cannot write {}", json_path));
  }
  fmt::print("{}", ToMarkdown(info, control, results));
  std::fflush(stdout);

  int exit_code = 0;
  for (const Result& r : results) {
    if (!r.error.empty() || r.check.rfind("failed", 0) == 0 ||
        r.check.find("failed") != std::string::npos) {
      exit_code = 1;
    }
  }
  if (!f.torch_python.empty()) {
    std::string script = f.torch_script;
    if (script.empty()) {
      for (const std::string& candidate :
           {SelfDir() + "/../share/epd/bench/torch_all_to_all.py",
            SelfDir() + "/torch_all_to_all.py", std::string(EPD_BENCH_SOURCE_DIR) + "/baselines/torch_all_to_all.py"}) {
        if (std::filesystem::exists(candidate)) {
          script = candidate;
          break;
        }
      }
    }
    if (script.empty()) return fail(NotFoundError("torch_all_to_all.py not found: pass --torch-script"));
    std::vector<std::string> argv = {f.torch_python, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc-per-node", std::to_string(ranks), script,
                                     "--merge-into", json_path,
                                     "--warmup", std::to_string(f.warmup),
                                     "--iterations", std::to_string(f.iterations)};
    if (f.no_check) argv.push_back("--no-check");
    auto pid = Spawn(argv, "");
    if (!pid.ok()) return fail(pid.status());
    const int code = WaitFor(*pid, std::chrono::seconds(f.frontend_timeout_s));
    if (code != 0) {
      if (code < 0) Terminate(*pid);
      fmt::print(stderr, "epd-bench: the torch baseline exited with {}\n", code);
      exit_code = 1;
    }
  }
  return exit_code;
}

}  // namespace
}  // namespace epd::bench

int main(int argc, char** argv) { return epd::bench::Main(argc, argv); }
