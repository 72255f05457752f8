#include "daemon/service/daemon_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_posix.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/unix_socket_probe.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/log.h"
#include "daemon/service/unix_listener.h"

namespace epd::service {
namespace {

// Frontends run as members of the daemon's group (deploy/epd.service): owner and group only.
constexpr mode_t kSocketMode = 0660;

// Creates the socket's directory and removes a stale socket left by a killed daemon, but
// never steals the socket of a daemon that still serves.
Status PrepareSocketPath(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    if (error) {
      return FailedPreconditionError("cannot create the socket directory {}: {}", parent.string(),
                                     error.message());
    }
  }
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return OkStatus();  // nothing there
  if (!S_ISSOCK(st.st_mode)) {
    return FailedPreconditionError("{} exists and is not a socket; refusing to replace it", path);
  }
  if (ProbeUnixSocket(path).ok()) {
    // UNAVAILABLE: may pass once the other daemon stops (main exits 1: systemd retries).
    return UnavailableError("another process already serves on {}", path);
  }
  if (unlink(path.c_str()) != 0) {
    return FailedPreconditionError("cannot remove the stale socket {}: {}", path,
                                   std::strerror(errno));
  }
  return OkStatus();
}

}  // namespace

DaemonServer::DaemonServer(Engine* engine, const ServerOptions& options)
    : epd_(engine, options.daemon_version, &peers_) {}

StatusOr<std::unique_ptr<DaemonServer>> DaemonServer::Start(Engine* engine,
                                                            const ServerOptions& options) {
  EPD_ASSIGN_OR_RETURN(std::string socket_path, UnixSocketPath(options.unix_address));
  EPD_RETURN_IF_ERROR(PrepareSocketPath(socket_path));

  std::unique_ptr<DaemonServer> server(new DaemonServer(engine, options));
  // Registers the reflection service with every server built after this call.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // The unix socket is served through UnixListener (below), not a gRPC listening port.
  if (!options.tcp_address.empty()) {
    builder.AddListeningPort(options.tcp_address, grpc::InsecureServerCredentials(),
                             &server->tcp_port_);
  }
  builder.RegisterService(&server->epd_);
  builder.RegisterService(&server->health_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr) {
    return UnavailableError("gRPC could not start{}{} (see the gRPC error above)",
                            options.tcp_address.empty() ? "" : " on ", options.tcp_address);
  }
  if (!options.tcp_address.empty() && server->tcp_port_ == 0) {
    server->Stop(std::chrono::milliseconds(0));
    return UnavailableError("cannot listen on tcp_listen = \"{}\"", options.tcp_address);
  }
  DaemonServer* raw = server.get();
  auto listener = UnixListener::Start(socket_path, kSocketMode, [raw](int fd) {
    auto credentials = ReadPeerCredentials(fd);
    if (!credentials.ok()) {
      EPD_LOG(kRpc, warn, "connection refused: {}", credentials.status().ToString());
      close(fd);
      return;
    }
    // Recorded before gRPC sees the fd, so no call on it can miss its credentials.
    raw->peers_.Record(fd, std::move(*credentials));
    grpc::AddInsecureChannelFromFd(raw->server_.get(), fd);
  });
  if (!listener.ok()) {
    server->Stop(std::chrono::milliseconds(0));
    return listener.status();
  }
  server->listener_ = std::move(*listener);
  server->socket_path_ = socket_path;  // ours to unlink from now on
  return server;
}

void DaemonServer::Stop(std::chrono::milliseconds grace) {
  if (stopped_) return;
  stopped_ = true;
  listener_.reset();  // no new connections
  health_.Shutdown();
  epd_.EndAllCalls(UnavailableError("epd is shutting down"));
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
}

DaemonServer::~DaemonServer() {
  if (server_ != nullptr) Stop(std::chrono::milliseconds(0));
}

}  // namespace epd::service
