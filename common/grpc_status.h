// epd::Status <-> grpc::Status, shared by the daemon's service layer and the client library.
// The codes are numerically identical (checked at compile time in grpc_status.cc); the
// message travels bounded (AnswerMessage). Part of epd_common_grpc, so epd_common itself needs
// no gRPC.
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "common/status.h"

namespace epd {

// The most bytes of an error message an answer carries. NOTE: a message quoting a client's
// 100 kB string would otherwise travel in the grpc-message header, past the 8 kB a gRPC peer
// accepts: the peer's transport then fails the whole connection, other calls on it included.
inline constexpr size_t kMaxAnswerMessageBytes = 1024;
// `message` when it fits kMaxAnswerMessageBytes, else its head (cut between UTF-8 characters)
// and how many bytes were left out.
std::string AnswerMessage(std::string_view message);

grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace epd
