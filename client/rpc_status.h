// Private: call contexts and unary calls whose grpc::Status comes back as an epd::Status
// (common/grpc_status.h).
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "common/grpc_status.h"
#include "common/session_secret.h"
#include "common/status.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd::internal {

inline std::unique_ptr<grpc::ClientContext> MakeContext(std::chrono::milliseconds timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  // NOTE: gRPC deadlines take system_clock time points.
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  return context;
}

// One unary call with the client's deadline; the daemon's code and message come back as is.
// A call that names a session passes its `session_secret` (common/session_secret.h), sent in
// header kSessionSecretHeader; empty: none (sessionless calls, or a daemon that gave none).
template <typename Request, typename Response>
Status CallUnary(v1::Epd::Stub& stub,
                 grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                       Response*),
                 const Request& request, Response* response, std::chrono::milliseconds timeout,
                 std::string_view session_secret = {}) {
  auto context = MakeContext(timeout);
  if (!session_secret.empty()) {
    context->AddMetadata(std::string(kSessionSecretHeader), std::string(session_secret));
  }
  return FromGrpcStatus((stub.*method)(context.get(), request, response));
}

}  // namespace epd::internal
