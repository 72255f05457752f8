// DaemonServer: the gRPC server of the daemon: epd.v1.Epd, grpc.health.v1.Health and server
// reflection, on a unix socket (mode 0660 from the start, parent directory created when
// missing; every connection's peer credentials known, peer_credentials.h) and optionally, opt
// in, a loopback TCP address whose callers are anonymous (no shm registration over it).
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
#include "daemon/service/peer_credentials.h"
#include "daemon/service/unix_listener.h"

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

  PeerTable peers_;  // before epd_, which reads it
  EpdService epd_;
  HealthService health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<UnixListener> listener_;
  std::string socket_path_;
  int tcp_port_ = 0;
  bool stopped_ = false;
};

}  // namespace epd::service
