// Links the installed client and uses it: connecting to a socket that does not exist must
// fail at once with NOT_FOUND naming it.
#include <cstdio>

#include "client/epd/client.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: epd_consumer unix:///missing/socket\n");
    return 2;
  }
  auto client = epd::Client::Connect(argv[1]);
  if (client.ok() || client.status().code() != epd::StatusCode::kNotFound) {
    std::fprintf(stderr, "expected NOT_FOUND, got %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer: %s\n", client.status().ToString().c_str());
  return 0;
}
