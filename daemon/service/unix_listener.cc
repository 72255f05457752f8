#include "daemon/service/unix_listener.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "daemon/core/log.h"

namespace epd::service {

StatusOr<std::unique_ptr<UnixListener>> UnixListener::Start(const std::string& path, mode_t mode,
                                                            OnConnection on_connection) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgumentError("socket path '{}' must have 1 to {} bytes", path,
                                sizeof(addr.sun_path) - 1);
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return InternalError("socket(AF_UNIX) failed: {}", std::strerror(errno));
  auto fail = [&](std::string_view what) {
    const int error = errno;
    close(fd);
    return UnavailableError("cannot listen on {}: {} failed: {}", path, what,
                            std::strerror(error));
  };
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return fail("bind");
  if (chmod(path.c_str(), mode) != 0) {
    Status status = fail("chmod");
    unlink(path.c_str());
    return status;
  }
  if (listen(fd, SOMAXCONN) != 0) {
    Status status = fail("listen");
    unlink(path.c_str());
    return status;
  }
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    Status status = fail("eventfd");
    unlink(path.c_str());
    return status;
  }
  std::unique_ptr<UnixListener> listener(new UnixListener(fd, wake, std::move(on_connection)));
  listener->thread_ = std::thread([raw = listener.get()] { raw->AcceptLoop(); });
  return listener;
}

UnixListener::UnixListener(int listen_fd, int wake_fd, OnConnection on_connection)
    : listen_fd_(listen_fd), wake_fd_(wake_fd), on_connection_(std::move(on_connection)) {}

UnixListener::~UnixListener() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) != sizeof(one)) {
    EPD_LOG(kRpc, warn, "cannot wake the accept loop: {}", std::strerror(errno));
  }
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void UnixListener::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (true) {
    fds[0].revents = fds[1].revents = 0;
    // NOTE: unbounded on purpose: the destructor's eventfd write ends the wait.
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      EPD_LOG(kRpc, error, "poll on the unix socket failed: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // EMFILE and friends: the pending connection stays queued; avoid a busy loop.
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        EPD_LOG(kRpc, warn, "accept on the unix socket failed: {}", std::strerror(errno));
        poll(nullptr, 0, 10);
      }
      continue;
    }
    ++accepted_;
    on_connection_(fd);
  }
}

}  // namespace epd::service
