// epd::Status <-> grpc::Status, shared by the daemon's service layer and the client library.
// The codes are numerically identical (checked at compile time in grpc_status.cc); the
// message travels unchanged. Part of epd_common_grpc, so epd_common itself needs no gRPC.
#pragma once

#include <grpcpp/support/status.h>

#include "common/status.h"

namespace epd {

grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace epd
