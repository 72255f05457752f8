// Private: grpc::Status <-> epd::Status (codes are numerically identical) and call contexts.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <memory>

#include "common/status.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd::internal {

inline Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(status.error_code()), status.error_message());
}

inline std::unique_ptr<grpc::ClientContext> MakeContext(std::chrono::milliseconds timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  // NOTE: gRPC deadlines take system_clock time points.
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  return context;
}

// One unary call with the client's deadline; the daemon's code and message come back as is.
template <typename Request, typename Response>
Status CallUnary(v1::Epd::Stub& stub,
                 grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                       Response*),
                 const Request& request, Response* response, std::chrono::milliseconds timeout) {
  auto context = MakeContext(timeout);
  return FromGrpc((stub.*method)(context.get(), request, response));
}

}  // namespace epd::internal
