// MetricsServer: Prometheus /metrics over HTTP (prometheus-cpp's exposer).
//
// Op metrics come from the engine's on_op_finished hook (OnOpFinished, called on worker and
// completion threads: it only bumps counters; op_series.h lists them, and when a destroyed
// group's go). Everything else (sessions, buffers, handle bytes per GPU, allocations, uptime,
// build info, the cluster and group transports) is read from the engine when scraped.
//
//   epd_sessions_open, epd_sessions_opened_total
//   epd_registered_buffers, epd_registered_bytes
//   epd_handle_bytes{rank,gpu}                      receive regions held on each rank
//   epd_allocations_total, epd_frees_total, epd_allocated_bytes
//   epd_uptime_seconds, epd_build_info{version,cuda,nccl,backend} 1
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "daemon/core/engine.h"

namespace epd::metrics {

struct BuildInfo {
  std::string version;
  std::string cuda;  // CUDA toolkit version this epd was built with; empty without CUDA
};

class MetricsServer {
 public:
  // Listens on `address` (IP:PORT; port 0 picks one). UNAVAILABLE when it cannot bind.
  // `group_retention`: how long a destroyed group's op series stay (OpSeries).
  static StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address, BuildInfo build,
                                                        std::chrono::milliseconds group_retention);
  ~MetricsServer();

  // The bound port (useful with port 0).
  int port() const;
  // Starts reading the engine's state on scrapes; call before serving, detach before the
  // engine is destroyed.
  void AttachEngine(const Engine* engine);
  void DetachEngine();
  // The engine's on_op_finished hook.
  void OnOpFinished(const OpRecord& op);

 private:
  class Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd::metrics
