#include "daemon/cluster/token.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace epd::cluster {

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) {
    return InvalidArgumentError("cluster.token_file = {}: {}", path, std::strerror(errno));
  }
  if ((info.st_mode & S_IRWXO) != 0) {
    return InvalidArgumentError(
        "cluster.token_file = {}: other users may read or write it (mode {:o}); chmod o-rwx it",
        path, info.st_mode & 0777);
  }
  std::ifstream in(path);
  if (!in) return InvalidArgumentError("cluster.token_file = {}: cannot read it", path);
  std::stringstream text;
  text << in.rdbuf();
  std::string token = text.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  if (token.empty()) return InvalidArgumentError("cluster.token_file = {} is empty", path);
  return token;
}

bool TokensEqual(std::string_view a, std::string_view b) {
  // NOTE: every byte of the longer input is visited, and the length difference folds into
  // the result, so the time depends on the lengths only.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  // A volatile read keeps the compiler from turning the loop into an early-exit compare.
  volatile unsigned char result = diff;
  return result == 0;
}

}  // namespace epd::cluster
