// The address rules of the daemon's listeners (daemon_config.h): unix socket paths, loopback
// TCP and numeric host:port addresses.
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "daemon/core/daemon_config.h"

namespace epd {

namespace {

bool ParsePort(std::string_view text) {
  if (text.empty() || text.size() > 5) return false;
  int port = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    port = port * 10 + (c - '0');
  }
  return port <= 65535;
}

bool IsIpv4(std::string_view host) {
  int parts = 0;
  size_t start = 0;
  while (start <= host.size()) {
    const size_t dot = std::min(host.find('.', start), host.size());
    const std::string_view part = host.substr(start, dot - start);
    if (part.empty() || part.size() > 3) return false;
    int value = 0;
    for (char c : part) {
      if (c < '0' || c > '9') return false;
      value = value * 10 + (c - '0');
    }
    if (value > 255) return false;
    ++parts;
    start = dot + 1;
  }
  return parts == 4;
}

bool IsBracketedIpv6(std::string_view host) {
  if (host.size() < 4 || host.front() != '[' || host.back() != ']') return false;
  return std::all_of(host.begin() + 1, host.end() - 1,
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) || c == ':'; });
}

}  // namespace

bool IsIpAddressWithPort(std::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view host = address.substr(0, colon);
  return (IsIpv4(host) || IsBracketedIpv6(host)) && ParsePort(address.substr(colon + 1));
}

StatusOr<std::string> UnixSocketPath(const std::string& address) {
  std::string path;
  if (address.rfind("unix://", 0) == 0) {
    path = address.substr(7);
    if (path.empty() || path[0] != '/') {
      return InvalidArgumentError(
          "listen = \"{}\": unix:// needs an absolute path "
          "(unix:///run/epd/epd.sock) or use unix:relative/path",
          address);
    }
  } else if (address.rfind("unix:", 0) == 0) {
    path = address.substr(5);
  } else {
    return InvalidArgumentError(
        "listen = \"{}\" must be a unix socket address (unix:///path); use tcp_listen for TCP",
        address);
  }
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgumentError("listen = \"{}\": the socket path must have 1 to {} bytes", address,
                                sizeof(sockaddr_un::sun_path) - 1);
  }
  return path;
}

bool IsLoopbackAddress(std::string_view address) {
  for (std::string_view host : {"127.0.0.1:", "[::1]:"}) {
    if (address.substr(0, host.size()) == host) return ParsePort(address.substr(host.size()));
  }
  return false;
}

}  // namespace epd
