#include "common/grpc_status.h"

#include <fmt/format.h>

#include "common/utf8.h"

namespace epd {
namespace {

constexpr bool SameCode(StatusCode ours, grpc::StatusCode theirs) {
  return static_cast<int>(ours) == static_cast<int>(theirs);
}
static_assert(SameCode(StatusCode::kOk, grpc::OK));
static_assert(SameCode(StatusCode::kCancelled, grpc::CANCELLED));
static_assert(SameCode(StatusCode::kUnknown, grpc::UNKNOWN));
static_assert(SameCode(StatusCode::kInvalidArgument, grpc::INVALID_ARGUMENT));
static_assert(SameCode(StatusCode::kDeadlineExceeded, grpc::DEADLINE_EXCEEDED));
static_assert(SameCode(StatusCode::kNotFound, grpc::NOT_FOUND));
static_assert(SameCode(StatusCode::kAlreadyExists, grpc::ALREADY_EXISTS));
static_assert(SameCode(StatusCode::kPermissionDenied, grpc::PERMISSION_DENIED));
static_assert(SameCode(StatusCode::kResourceExhausted, grpc::RESOURCE_EXHAUSTED));
static_assert(SameCode(StatusCode::kFailedPrecondition, grpc::FAILED_PRECONDITION));
static_assert(SameCode(StatusCode::kAborted, grpc::ABORTED));
static_assert(SameCode(StatusCode::kOutOfRange, grpc::OUT_OF_RANGE));
static_assert(SameCode(StatusCode::kUnimplemented, grpc::UNIMPLEMENTED));
static_assert(SameCode(StatusCode::kInternal, grpc::INTERNAL));
static_assert(SameCode(StatusCode::kUnavailable, grpc::UNAVAILABLE));
static_assert(SameCode(StatusCode::kDataLoss, grpc::DATA_LOSS));
static_assert(SameCode(StatusCode::kUnauthenticated, grpc::UNAUTHENTICATED));

}  // namespace

std::string AnswerMessage(std::string_view message) {
  if (message.size() <= kMaxAnswerMessageBytes) return std::string(message);
  // Room for the note: " ... (<20 digits> more bytes)".
  const size_t head = Utf8StartAtOrBefore(message, kMaxAnswerMessageBytes - 40);
  return fmt::format("{} ... ({} more bytes)", message.substr(0, head), message.size() - head);
}

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      AnswerMessage(status.message()));
}

Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(status.error_code()), status.error_message());
}

}  // namespace epd
