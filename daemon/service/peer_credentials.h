// Who is on the other end of a call: the pid, uid and groups of the process that connected to
// the unix socket, read once per connection with SO_PEERCRED / SO_PEERGROUPS.
//
// gRPC does not expose a connection's fd, so the daemon accepts unix connections itself
// (UnixListener) and hands each connected fd to the server (grpc::AddInsecureChannelFromFd).
// Such a connection's peer string is "fd:<n>". PeerTable maps that string to the credentials
// read at accept time.
//
// NOTE: why a reused fd number cannot lend one connection's credentials to another: gRPC
// closes the fd only when the transport is destroyed, and every call holds a reference on its
// transport. So while a handler runs for a call on "fd:<n>", fd <n> is that call's connection,
// and the table entry for <n> was written when that connection was accepted (before it was
// handed to gRPC). The table is bounded by the number of open fds (entries are overwritten).
#pragma once

#include <sys/types.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "daemon/core/engine.h"

namespace epd::service {

struct PeerCredentials {
  SessionPeer peer;               // pid, uid, primary gid
  std::vector<gid_t> groups;      // supplementary groups (SO_PEERGROUPS), with the primary one
};

// Reads the credentials of the process connected on unix socket `fd`.
StatusOr<PeerCredentials> ReadPeerCredentials(int fd);

// The gRPC peer string of a connection handed over with AddInsecureChannelFromFd.
std::string FdPeerName(int fd);

class PeerTable {
 public:
  void Record(int fd, PeerCredentials credentials);
  // The credentials of a call's connection; nullopt for TCP (or any connection not accepted
  // by the daemon's own listener).
  std::optional<PeerCredentials> Lookup(std::string_view grpc_peer) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, PeerCredentials> by_fd_;
};

}  // namespace epd::service
