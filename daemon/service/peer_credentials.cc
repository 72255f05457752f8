#include "daemon/service/peer_credentials.h"

#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace epd::service {

StatusOr<PeerCredentials> ReadPeerCredentials(int fd) {
  ucred cred{};
  socklen_t length = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
    return InternalError("getsockopt(SO_PEERCRED) failed: {}", std::strerror(errno));
  }
  PeerCredentials credentials;
  credentials.peer = SessionPeer{cred.pid, cred.uid, cred.gid};
  // Group membership decides what shm objects a peer could open itself; the kernel answers
  // ERANGE with the needed size when the first guess is too small.
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 2; ++attempt) {
    socklen_t bytes = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &bytes) == 0) {
      groups.resize(bytes / sizeof(gid_t));
      credentials.groups = std::move(groups);
      break;
    }
    if (errno != ERANGE) {
      return InternalError("getsockopt(SO_PEERGROUPS) failed: {}", std::strerror(errno));
    }
    groups.resize(bytes / sizeof(gid_t) + 1);
  }
  credentials.groups.push_back(cred.gid);
  return credentials;
}

std::string FdPeerName(int fd) { return "fd:" + std::to_string(fd); }

void PeerTable::Record(int fd, PeerCredentials credentials) {
  std::lock_guard lock(mutex_);
  by_fd_[fd] = std::move(credentials);
}

std::optional<PeerCredentials> PeerTable::Lookup(std::string_view grpc_peer) const {
  constexpr std::string_view kPrefix = "fd:";
  if (grpc_peer.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  const std::string_view digits = grpc_peer.substr(kPrefix.size());
  int fd = -1;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  std::lock_guard lock(mutex_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

}  // namespace epd::service
