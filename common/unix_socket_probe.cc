#include "common/unix_socket_probe.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace epd {
namespace {

std::string GroupName(gid_t gid) {
  const group* entry = getgrgid(gid);
  return entry != nullptr ? std::string(entry->gr_name) : std::to_string(gid);
}

// The first path component (the socket or a directory above it) this process may not use.
std::string Blocker(const std::string& path) {
  std::filesystem::path at = std::filesystem::path(path).parent_path();
  std::string blocker = path;
  for (; !at.empty() && at != at.root_path(); at = at.parent_path()) {
    if (access(at.c_str(), X_OK) != 0) blocker = at.string();
  }
  return blocker;
}

}  // namespace

std::string UnixSocketPathOf(const std::string& address) {
  if (address.rfind("unix://", 0) == 0) return address.substr(7);
  if (address.rfind("unix:", 0) == 0) return address.substr(5);
  return "";
}

Status ProbeUnixSocket(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgumentError("unix socket path '{}' must have 1 to {} bytes", path,
                                sizeof(addr.sun_path) - 1);
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError("socket(AF_UNIX): {}", std::strerror(errno));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  const int result = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int error = errno;
  close(fd);
  if (result == 0) return OkStatus();
  switch (error) {
    case ENOENT:
      return NotFoundError("no such socket: {} (is the epd daemon running? `systemctl status epd`)",
                           path);
    case EACCES:
    case EPERM: {
      const std::string blocker = Blocker(path);
      struct stat st {};
      if (stat(blocker.c_str(), &st) != 0) {
        return PermissionDeniedError("permission denied on {}", blocker);
      }
      return PermissionDeniedError(
          "permission denied on {} (owner uid {}, group '{}', mode {:o}): add this user to group "
          "'{}' and log in again",
          blocker, st.st_uid, GroupName(st.st_gid), st.st_mode & 07777, GroupName(st.st_gid));
    }
    case ECONNREFUSED: {
      struct stat st {};
      if (stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
        return FailedPreconditionError("{} is not a unix socket", path);
      }
      return UnavailableError("nobody listens on {}: a socket left by a stopped epd daemon", path);
    }
    case ENOTSOCK:
    case ENOTDIR:
      return FailedPreconditionError("{} is not a unix socket: {}", path, std::strerror(error));
    default:
      return UnavailableError("cannot connect to {}: {}", path, std::strerror(error));
  }
}

}  // namespace epd
