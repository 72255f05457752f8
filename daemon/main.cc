// epd: the node daemon. Reads the config file, lets flags override it, creates the backend,
// the engine and the persistent groups/handles, serves gRPC (and Prometheus /metrics) until
// SIGTERM/SIGINT, then drains and exits 0. SIGHUP re-reads the config file and applies what
// can change at runtime (the log level).
//
// Exit codes: 0 clean shutdown (or --help / --version / a valid --check-config); 1 runtime
// failure (cannot listen, backend or engine failed, shutdown hung); 2 bad flags or config
// (the message names the key), always reported before the backend is created.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "daemon/app/flags.h"
#include "daemon/app/reload.h"
#include "daemon/app/startup.h"
#include "daemon/app/systemd_notifier.h"
#include "daemon/cluster/cluster_node.h"
#include "daemon/cluster/token.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/engine.h"
#include "daemon/core/log.h"
#include "daemon/metrics/metrics_server.h"
#include "daemon/service/daemon_server.h"

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
// How long releasing the engine and backend may take. Ops the drain gave up on were released
// by the backends' abort word (every host and device wait polls it), so teardown is prompt.
constexpr std::chrono::milliseconds kTeardownLimit{2'000};
// Last resort, beyond drain, grace and teardown: something hung (a bug); exit 1.
constexpr std::chrono::milliseconds kShutdownSlack{2'000};
// Beyond its bounded waits (fence, then peers: op_timeout each), how long one op may keep a
// worker busy before the watchdog calls the thread hung.
constexpr std::chrono::milliseconds kLivenessSlack{5'000};

int Fail(int code, const Status& status) {
  std::fprintf(stderr, "epd: %s\n", status.ToString().c_str());
  return code;
}

// --check-config FILE: everything that can be checked without creating the backend.
int CheckConfig(const CLI::App& app, const app::Flags& flags) {
  auto config = app::ResolveConfig(app, flags, flags.check_config_path);
  if (!config.ok()) return Fail(kExitUsage, config.status());
  std::printf("epd: %s: OK: %s\n(groups are checked against the node's ranks at startup)\n",
              flags.check_config_path.c_str(), app::DescribeConfig(*config).c_str());
  return 0;
}

// SIGHUP: re-reads the config file (flags and EPD_LOG_LEVEL still win) and applies the log
// level; a file that no longer parses changes nothing.
void Reload(const CLI::App& app, const app::Flags& flags, const DaemonConfig& running) {
  auto fresh = app::ResolveConfig(app, flags, flags.config_path);
  if (!fresh.ok()) {
    EPD_LOG(kRpc, error, "SIGHUP: config not reloaded, keeping the running settings: {}",
            fresh.status().ToString());
    return;
  }
  const app::ReloadPlan plan = app::PlanReload(running, *fresh);
  log::SetLevel(plan.log_level);
  EPD_LOG(kRpc, info, "SIGHUP: reloaded {}: log_level = {}{}",
          flags.config_path.empty() ? "(no config file)" : flags.config_path, plan.log_level,
          plan.ignored.empty()
              ? ""
              : fmt::format("; ignored until restart: {}", fmt::join(plan.ignored, ", ")));
}

// Serves until SIGTERM / SIGINT (or a fatal device error), then drains: health NOT_SERVING,
// the engine finishes in-flight ops and closes sessions, the server ends streams and stops.
// The caller destroys the server, then the engine (and with it the backend).
int ServeUntilSignal(Engine& engine, service::DaemonServer& server, const DaemonConfig& config,
                     const sigset_t& signals, const CLI::App& app, const app::Flags& flags) {
  const NodeDescription node = engine.DescribeNode();
  const std::string tcp =
      config.tcp_listen.empty()
          ? ""
          : fmt::format(" and {} (port {})", config.tcp_listen, server.tcp_port());
  EPD_LOG(kRpc, info,
          "epd {} serving on {}{} (backend {}, {} ranks, {} persistent groups, metrics {}, "
          "logging to {})",
          EPD_VERSION, config.listen, tcp, node.backend, node.ranks, config.groups.size(),
          config.metrics_listen.empty() ? "off" : config.metrics_listen, log::Destination());
  app::SystemdNotifier notifier(engine, 2 * config.op_timeout + kLivenessSlack);
  notifier.Ready();

  int received = 0;
  for (;;) {
    sigwait(&signals, &received);
    if (received != SIGHUP) break;
    Reload(app, flags, config);
  }
  const bool fatal = received == kFatalSignal;
  EPD_LOG(kRpc, info, "{}: draining (up to {} ms) and stopping",
          fatal ? "fatal device error" : strsignal(received), config.drain_timeout.count());
  notifier.Stopping();

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

int Run(int argc, char** argv) {
  // Signals are taken by sigwait in this thread only: block them before any thread starts so
  // every thread (gRPC, workers, metrics) inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, kFatalSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a vanished client must not kill the daemon

  CLI::App app{"epd: expert-parallel MoE dispatch/combine daemon"};
  app::Flags flags;
  app::AddFlags(app, &flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);  // prints help, the version or the error
    return code == 0 ? 0 : kExitUsage;
  }
  if (app.count("--check-config") > 0) return CheckConfig(app, flags);

  auto resolved = app::ResolveConfig(app, flags, flags.config_path);
  if (!resolved.ok()) return Fail(kExitUsage, resolved.status());
  const DaemonConfig config = std::move(resolved).value();
  log::SetLevel(config.log_level);

  std::unique_ptr<metrics::MetricsServer> metrics;
  if (!config.metrics_listen.empty()) {
    auto started = metrics::MetricsServer::Start(config.metrics_listen,
                                                 metrics::BuildInfo{EPD_VERSION, EPD_CUDA_VERSION},
                                                 config.metrics_group_retention);
    if (!started.ok()) return Fail(kExitRuntimeError, started.status());
    metrics = std::move(started).value();
    EPD_LOG(kRpc, info, "metrics on http://{}/metrics (port {})", config.metrics_listen,
            metrics->port());
  }

  // Multi-node: the token is read before anything starts, so a bad file is a usage error.
  std::string token;
  if (config.cluster.enabled()) {
    auto read = cluster::ReadTokenFile(config.cluster.token_file);
    if (!read.ok()) return Fail(kExitUsage, read.status());
    token = std::move(read).value();
  }
  app::ClusterAttachment attachment;
  app::JoinCluster join;
  if (config.cluster.enabled()) {
    join = [&config, &token](int ranks) -> StatusOr<app::ClusterAttachment> {
      EPD_ASSIGN_OR_RETURN(auto node, cluster::ClusterNode::Start(config.cluster, ranks, token));
      return app::ClusterAttachment{node};
    };
  }
  auto backend = app::CreateBackend(config, kFatalSignal, join, &attachment);
  if (!backend.ok()) {
    const bool usage = backend.status().code() == StatusCode::kInvalidArgument;
    return Fail(usage ? kExitUsage : kExitRuntimeError, backend.status().WithContext("backend"));
  }
  DaemonConfig placed = config;
  ApplyClusterSpan(&placed, (*backend)->num_ranks());
  Status fits = CheckGroupsAgainstNode(placed, (*backend)->num_ranks());
  if (!fits.ok()) return Fail(kExitUsage, fits);

  EngineOptions engine_options;
  engine_options.unary_session_idle_timeout = config.session_idle_timeout;
  engine_options.drain_timeout = config.drain_timeout;
  engine_options.limits = config.limits;
  engine_options.cluster = attachment.store;
  if (metrics != nullptr) {
    engine_options.on_op_finished = [sink = metrics.get()](const OpRecord& op) {
      sink->OnOpFinished(op);
    };
  }
  auto engine = Engine::Create(std::move(backend).value(), engine_options);
  if (!engine.ok()) return Fail(kExitRuntimeError, engine.status().WithContext("engine"));
  Status persistent = app::CreatePersistentObjects(**engine, placed);
  if (!persistent.ok()) {
    return Fail(app::IsConfigProblem(persistent) ? kExitUsage : kExitRuntimeError, persistent);
  }

  service::ServerOptions server_options{config.listen, config.tcp_listen, EPD_VERSION};
  auto server = service::DaemonServer::Start(engine->get(), server_options);
  if (!server.ok()) {
    return Fail(app::IsConfigProblem(server.status()) ? kExitUsage : kExitRuntimeError,
                server.status());
  }
  if (metrics != nullptr) metrics->AttachEngine(engine->get());

  const int code = ServeUntilSignal(**engine, **server, config, signals, app, flags);
  server->reset();
  if (metrics != nullptr) metrics->DetachEngine();
  EPD_LOG(kRpc, debug, "server stopped; releasing the engine and backend");
  engine->reset();  // the backend's waits were aborted at shutdown: nothing blocks this
  EPD_LOG(kRpc, info, "epd stopped");
  return code;
}

}  // namespace
}  // namespace epd

int main(int argc, char** argv) { return epd::Run(argc, argv); }
