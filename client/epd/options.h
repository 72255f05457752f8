// Client-side limits: every wait of the client library is bounded.
#pragma once

#include <chrono>

namespace epd {

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{10'000};  // Connect: channel READY
  std::chrono::milliseconds rpc_timeout{30'000};      // each unary RPC (deadline)
  std::chrono::milliseconds op_timeout{60'000};       // waiting for a stream op's answer
  std::chrono::milliseconds close_timeout{10'000};    // Session::Close: daemon ends the stream
};

}  // namespace epd
