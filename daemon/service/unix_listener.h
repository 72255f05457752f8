// UnixListener: the daemon's own accept loop on its unix socket, so that every connection's
// peer credentials are read before gRPC serves it (peer_credentials.h says why).
//
// The socket file gets its final mode before listen(): until then a connect() is refused, so
// there is no moment, whatever the umask, at which a process outside the mode can connect.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/status.h"

namespace epd::service {

class UnixListener {
 public:
  // Called on the accept thread with each connected, non-blocking fd; takes ownership.
  using OnConnection = std::function<void(int fd)>;

  // Binds `path` (which must not exist), sets `mode`, then listens and starts accepting.
  static StatusOr<std::unique_ptr<UnixListener>> Start(const std::string& path, mode_t mode,
                                                       OnConnection on_connection);
  ~UnixListener();  // stops accepting (the socket file is left to the owner to unlink)
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  uint64_t accepted() const { return accepted_; }

 private:
  UnixListener(int listen_fd, int wake_fd, OnConnection on_connection);
  void AcceptLoop();

  int listen_fd_;
  int wake_fd_;  // eventfd: written once to stop the loop
  OnConnection on_connection_;
  std::atomic<uint64_t> accepted_{0};
  std::thread thread_;
};

}  // namespace epd::service
