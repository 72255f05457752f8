// epd: the node daemon. Reads the config file, lets flags override it, creates the backend,
// the engine and the persistent groups/handles, serves gRPC until SIGTERM/SIGINT, then
// drains and exits 0.
//
// Exit codes: 0 clean shutdown (or --help / --version); 1 runtime failure (cannot listen,
// backend or engine failed, shutdown hung); 2 bad flags or config (the message names the key).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/backends/cpu/stale_shm.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/engine.h"
#include "daemon/core/log.h"
#include "daemon/service/daemon_server.h"

#ifdef EPD_WITH_CUDA
#include "daemon/backends/cuda/cuda_backend.h"
#endif
#ifdef EPD_WITH_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace epd {
namespace {

constexpr int kExitRuntimeError = 1;
constexpr int kExitUsage = 2;
// A backend's fatal device error asks the main thread to stop with exit code 1 (so systemd's
// Restart=on-failure restarts the daemon).
constexpr int kFatalSignal = SIGUSR1;
// How long the server waits, after the engine drained and streams ended, for the last unary
// calls to finish and for clients to close their connections (gRPC's shutdown waits for
// every connection; idle clients are disconnected when the grace ends).
constexpr std::chrono::milliseconds kServerGrace{500};
// How long releasing the engine and backend may take. An op the drain gave up on can hold
// the teardown until its own op_timeout; the process then exits without waiting for it (the
// kernel and driver release what it holds).
constexpr std::chrono::milliseconds kTeardownLimit{2'000};
// Last resort, beyond drain, grace and teardown: something hung; exit 1.
constexpr std::chrono::milliseconds kShutdownSlack{2'000};

// Flags; each overrides the config file's key of the same name only when given.
struct Flags {
  std::string config_path;
  std::string listen, tcp_listen, backend, gpus, log_level;
  int cpu_ranks = 0;
  int64_t op_timeout_ms = 0, session_idle_timeout_ms = 0, drain_timeout_ms = 0;
};

void Notify(const char* state) {
#ifdef EPD_WITH_SYSTEMD
  sd_notify(0, state);  // a no-op unless NOTIFY_SOCKET is set (Type=notify)
#else
  (void)state;
#endif
}

int Fail(int code, const Status& status) {
  std::fprintf(stderr, "epd: %s\n", status.ToString().c_str());
  return code;
}

StatusOr<std::vector<int>> ParseGpuList(const std::string& text) {
  std::vector<int> gpus;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    const long value = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < 0 || value > 1024) {
      return InvalidArgumentError("--gpus = \"{}\": expected GPU indices like 0,1,2", text);
    }
    gpus.push_back(static_cast<int>(value));
    start = comma + 1;
  }
  return gpus;
}

// The config file (when given) with the flags applied on top, validated.
StatusOr<DaemonConfig> ResolveConfig(const CLI::App& app, const Flags& flags) {
  DaemonConfig config;
  if (!flags.config_path.empty()) {
    EPD_ASSIGN_OR_RETURN(config, LoadDaemonConfig(flags.config_path));
  }
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (given("--listen")) config.listen = flags.listen;
  if (given("--tcp-listen")) config.tcp_listen = flags.tcp_listen;
  if (given("--backend")) {
    EPD_ASSIGN_OR_RETURN(config.backend, ParseBackendKind(flags.backend));
  }
  if (given("--cpu-ranks")) config.cpu_ranks = flags.cpu_ranks;
  if (given("--gpus")) {
    EPD_ASSIGN_OR_RETURN(config.gpus, ParseGpuList(flags.gpus));
  }
  // Log level: flag, then EPD_LOG_LEVEL, then the config file.
  if (given("--log-level")) {
    config.log_level = flags.log_level;
  } else if (const char* env = std::getenv("EPD_LOG_LEVEL"); env != nullptr && *env != '\0') {
    config.log_level = env;
  }
  if (given("--op-timeout-ms")) config.op_timeout = std::chrono::milliseconds(flags.op_timeout_ms);
  if (given("--session-idle-timeout-ms")) {
    config.session_idle_timeout = std::chrono::milliseconds(flags.session_idle_timeout_ms);
  }
  if (given("--drain-timeout-ms")) {
    config.drain_timeout = std::chrono::milliseconds(flags.drain_timeout_ms);
  }
  Status valid = ValidateDaemonSettings(config);
  if (!valid.ok()) return valid.WithContext("invalid setting (config file or flag)");
  return config;
}

StatusOr<std::unique_ptr<Backend>> CreateBackend(const DaemonConfig& config) {
  BackendKind kind = config.backend;
  if (kind == BackendKind::kAuto) {
    kind = BackendKind::kCpu;
#ifdef EPD_WITH_CUDA
    int devices = 0;
    if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) kind = BackendKind::kCuda;
#endif
    EPD_LOG(kCore, info, "backend = auto: using the {} backend", BackendKindName(kind));
  }
  if (kind == BackendKind::kCuda) {
#ifdef EPD_WITH_CUDA
    CudaBackendOptions options;
    options.devices = config.gpus;
    options.op_timeout = config.op_timeout;
    options.on_fatal_error = [](const Status& status) {
      EPD_LOG(kCore, critical, "fatal device error, stopping: {}", status.ToString());
      kill(getpid(), kFatalSignal);
    };
    return CreateCudaBackend(options);
#else
    return InvalidArgumentError(
        "backend = cuda, but this epd was built without CUDA (-DEPD_WITH_CUDA=OFF); use "
        "--backend cpu");
#endif
  }
  if (!config.gpus.empty()) EPD_LOG(kCore, warn, "gpus is ignored by the cpu backend");
  ReclaimStaleShm();  // what a killed daemon left in /dev/shm
  return CreateCpuBackend(CpuBackendOptions{config.cpu_ranks, config.op_timeout},
                          DefaultExportedShmGroup());
}

// A failure that a restart cannot fix (exit 2, which systemd does not restart): a bad value,
// a persistent object the node cannot hold, a socket path that cannot be used.
bool IsConfigProblem(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kResourceExhausted:
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kPermissionDenied:
      return true;
    default:
      return false;
  }
}

// Creates the config file's persistent groups and their named handles.
Status CreatePersistentObjects(Engine& engine, const DaemonConfig& config) {
  for (size_t i = 0; i < config.groups.size(); ++i) {
    const auto& decl = config.groups[i];
    const std::string where = fmt::format("group[{}] (name = \"{}\")", i, decl.config.name);
    EPD_RETURN_IF_ERROR(
        engine.CreateGroup(std::nullopt, decl.config, /*persistent=*/true).WithContext(where));
    for (size_t h = 0; h < decl.handles.size(); ++h) {
      for (int rank : decl.handles[h].ranks) {
        EPD_RETURN_IF_ERROR(
            engine.CreatePersistentHandle(decl.config.name, rank, decl.handles[h].name)
                .WithContext(fmt::format("{}.handle[{}] (name = \"{}\", rank {})", where, h,
                                         decl.handles[h].name, rank)));
      }
    }
    EPD_LOG(kCore, info, "persistent {} with {} named handle(s)", decl.config.ToString(),
            decl.handles.size());
  }
  return OkStatus();
}

void AddFlags(CLI::App& app, Flags* flags) {
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", std::string("epd ") + EPD_VERSION);
  app.add_option("--config", flags->config_path, "TOML config file (deploy/epd.toml)");
  app.add_option("--listen", flags->listen, "unix socket address (unix:///run/epd/epd.sock)");
  app.add_option("--tcp-listen", flags->tcp_listen,
                 "ALSO serve unauthenticated gRPC on 127.0.0.1:PORT or [::1]:PORT: every local "
                 "user can then open sessions, create groups and handles and run ops (no shm "
                 "registration over TCP); off by default");
  app.add_option("--backend", flags->backend, "auto, cuda or cpu")
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
  app.add_option("--cpu-ranks", flags->cpu_ranks, "ranks of the cpu backend")
      ->check(CLI::Range(1, kMaxCpuRanks));
  app.add_option("--gpus", flags->gpus, "GPU indices of the cuda backend, e.g. 0,1");
  app.add_option("--log-level", flags->log_level, "trace, debug, info, warn, error, critical, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--op-timeout-ms", flags->op_timeout_ms, "bound of every device wait")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
  app.add_option("--session-idle-timeout-ms", flags->session_idle_timeout_ms,
                 "unary sessions idle this long are closed")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
  app.add_option("--drain-timeout-ms", flags->drain_timeout_ms,
                 "how long shutdown waits for in-flight ops")
      ->check(CLI::Range(int64_t{0}, int64_t{86'400'000}));
}

// Serves until SIGTERM / SIGINT (or a fatal device error), then drains: health NOT_SERVING,
// the engine finishes in-flight ops and closes sessions, the server ends streams and stops.
// The caller destroys the server, then the engine (and with it the backend).
int ServeUntilSignal(Engine& engine, service::DaemonServer& server, const DaemonConfig& config,
                     const sigset_t& signals) {
  const NodeDescription node = engine.DescribeNode();
  const std::string tcp =
      config.tcp_listen.empty()
          ? ""
          : fmt::format(" and {} (port {})", config.tcp_listen, server.tcp_port());
  EPD_LOG(kRpc, info, "epd {} serving on {}{} (backend {}, {} ranks, {} persistent groups)",
          EPD_VERSION, config.listen, tcp, node.backend, node.ranks, config.groups.size());
  Notify("READY=1");

  int received = 0;
  sigwait(&signals, &received);
  const bool fatal = received == kFatalSignal;
  EPD_LOG(kRpc, info, "{}: draining (up to {} ms) and stopping",
          fatal ? "fatal device error" : strsignal(received), config.drain_timeout.count());
  Notify("STOPPING=1");

  // Shutdown must finish even if something hangs: systemd and tests expect a prompt exit.
  const auto limit = config.drain_timeout + kServerGrace + kTeardownLimit + kShutdownSlack;
  std::thread([limit] {
    std::this_thread::sleep_for(limit);
    EPD_LOG(kRpc, critical, "shutdown did not finish within {} ms; exiting", limit.count());
    std::_Exit(kExitRuntimeError);
  }).detach();

  server.BeginDrain();  // health: NOT_SERVING, so balancers stop sending work
  engine.Shutdown();    // new ops UNAVAILABLE; in-flight ops finish; sessions close
  EPD_LOG(kRpc, debug, "engine drained; stopping the server");
  server.Stop(kServerGrace);
  return fatal ? kExitRuntimeError : 0;
}

// Destroys the engine (and its backend) on a helper thread; false when that is still blocked
// after `limit`.
bool ReleaseWithin(std::unique_ptr<Engine> engine, std::chrono::milliseconds limit) {
  auto released = std::make_shared<std::promise<void>>();
  std::future<void> done = released->get_future();
  std::thread([engine = std::move(engine), released]() mutable {
    engine.reset();
    released->set_value();
  }).detach();
  return done.wait_for(limit) == std::future_status::ready;
}

int Run(int argc, char** argv) {
  // Signals are taken by sigwait in this thread only: block them before any thread starts so
  // every thread (gRPC, workers) inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, kFatalSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a vanished client must not kill the daemon

  CLI::App app{"epd: expert-parallel MoE dispatch/combine daemon"};
  Flags flags;
  AddFlags(app, &flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);  // prints help, the version or the error
    return code == 0 ? 0 : kExitUsage;
  }

  auto resolved = ResolveConfig(app, flags);
  if (!resolved.ok()) return Fail(kExitUsage, resolved.status());
  const DaemonConfig config = std::move(resolved).value();
  log::SetLevel(config.log_level);

  auto backend = CreateBackend(config);
  if (!backend.ok()) {
    const bool usage = backend.status().code() == StatusCode::kInvalidArgument;
    return Fail(usage ? kExitUsage : kExitRuntimeError, backend.status().WithContext("backend"));
  }
  Status fits = CheckGroupsAgainstNode(config, (*backend)->num_ranks());
  if (!fits.ok()) return Fail(kExitUsage, fits);

  EngineOptions engine_options;
  engine_options.unary_session_idle_timeout = config.session_idle_timeout;
  engine_options.drain_timeout = config.drain_timeout;
  engine_options.limits = config.limits;
  auto engine = Engine::Create(std::move(backend).value(), engine_options);
  if (!engine.ok()) return Fail(kExitRuntimeError, engine.status().WithContext("engine"));
  Status persistent = CreatePersistentObjects(**engine, config);
  if (!persistent.ok()) {
    return Fail(IsConfigProblem(persistent) ? kExitUsage : kExitRuntimeError, persistent);
  }

  service::ServerOptions server_options{config.listen, config.tcp_listen, EPD_VERSION};
  auto server = service::DaemonServer::Start(engine->get(), server_options);
  if (!server.ok()) {
    return Fail(IsConfigProblem(server.status()) ? kExitUsage : kExitRuntimeError,
                server.status());
  }

  const int code = ServeUntilSignal(**engine, **server, config, signals);
  server->reset();
  EPD_LOG(kRpc, debug, "server stopped; releasing the engine and backend");
  if (!ReleaseWithin(std::move(engine).value(), kTeardownLimit)) {
    EPD_LOG(kRpc, warn, "epd stopped; teardown still blocked after {} ms by an abandoned op",
            kTeardownLimit.count());
    std::_Exit(code);
  }
  EPD_LOG(kRpc, info, "epd stopped");
  return code;
}

}  // namespace
}  // namespace epd

int main(int argc, char** argv) { return epd::Run(argc, argv); }
