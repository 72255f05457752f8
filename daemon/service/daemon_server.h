// DaemonServer: the gRPC server of the daemon: epd.v1.Epd, grpc.health.v1.Health and server
// reflection, on a unix socket (mode 0660, parent directory created when missing) and
// optionally a loopback TCP address.
//
// Shutdown order (main.cc): BeginDrain() (health NOT_SERVING), Engine::Shutdown() (in-flight
// ops finish, sessions close), then Stop() ends the remaining streams and the server.
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <memory>
#include <string>

#include "daemon/core/engine.h"
#include "daemon/service/epd_service.h"
#include "daemon/service/health_service.h"

namespace epd::service {

struct ServerOptions {
  std::string unix_address;  // "unix:///run/epd/epd.sock" or "unix:relative/path"
  std::string tcp_address;   // empty: none
  std::string daemon_version;
};

class DaemonServer {
 public:
  static StatusOr<std::unique_ptr<DaemonServer>> Start(Engine* engine,
                                                       const ServerOptions& options);
  ~DaemonServer();

  int tcp_port() const { return tcp_port_; }  // the bound port (0 when no TCP)
  void BeginDrain() { health_.SetServing(false); }
  // Ends Session and Watch streams, then shuts the server down; calls still running after
  // `grace` are cancelled.
  void Stop(std::chrono::milliseconds grace);

 private:
  DaemonServer(Engine* engine, const ServerOptions& options);

  EpdService epd_;
  HealthService health_;
  std::unique_ptr<grpc::Server> server_;
  std::string socket_path_;
  int tcp_port_ = 0;
  bool stopped_ = false;
};

}  // namespace epd::service
