// Why a unix socket cannot be reached, found with one connect(2): the client asks before
// gRPC's channel would retry for the whole connect timeout and report only "cannot connect";
// the daemon asks before it replaces a socket (a live daemon's is never taken over).
#pragma once

#include <string>

#include "common/status.h"

namespace epd {

// The socket path of "unix:///abs" / "unix:rel" addresses; empty for any other address.
std::string UnixSocketPathOf(const std::string& address);

// OK when something accepts connections on `path`. Otherwise NOT_FOUND (no such socket: the
// daemon is not running or listens elsewhere), PERMISSION_DENIED (naming the socket's or its
// directory's group to join), UNAVAILABLE (a socket nobody listens on: the daemon stopped)
// or FAILED_PRECONDITION (not a socket).
Status ProbeUnixSocket(const std::string& path);

}  // namespace epd
