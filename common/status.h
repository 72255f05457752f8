// Status / StatusOr: the one error type of epd, end to end.
//
// Codes are numerically identical to grpc::StatusCode so the service layer maps them 1:1.
// Nothing on the data plane throws; every fallible function returns Status or StatusOr<T>.
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <utility>

namespace epd {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

const char* StatusCodeName(StatusCode code);

class Status;
// Prints "StatusOr::value() on an error: <status>" to stderr and aborts: reading the value of
// a failed StatusOr is a caller bug, and a clear message beats undefined behaviour.
[[noreturn]] void DieOfBadStatusOrAccess(const Status& status);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

  // Prefixes the message with context, keeping the code ("creating handle: ...").
  Status WithContext(std::string_view context) const;
  // Explicitly drops a status where failure is already handled (logged) by the callee.
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }

#define EPD_DEFINE_ERROR_FACTORY(Name, Code)                                           \
  template <typename... Args>                                                          \
  Status Name(fmt::format_string<Args...> format, Args&&... args) {                    \
    return Status(StatusCode::Code, fmt::format(format, std::forward<Args>(args)...)); \
  }
EPD_DEFINE_ERROR_FACTORY(InvalidArgumentError, kInvalidArgument)
EPD_DEFINE_ERROR_FACTORY(NotFoundError, kNotFound)
EPD_DEFINE_ERROR_FACTORY(AlreadyExistsError, kAlreadyExists)
EPD_DEFINE_ERROR_FACTORY(PermissionDeniedError, kPermissionDenied)
EPD_DEFINE_ERROR_FACTORY(ResourceExhaustedError, kResourceExhausted)
EPD_DEFINE_ERROR_FACTORY(FailedPreconditionError, kFailedPrecondition)
EPD_DEFINE_ERROR_FACTORY(AbortedError, kAborted)
EPD_DEFINE_ERROR_FACTORY(DeadlineExceededError, kDeadlineExceeded)
EPD_DEFINE_ERROR_FACTORY(UnavailableError, kUnavailable)
EPD_DEFINE_ERROR_FACTORY(InternalError, kInternal)
EPD_DEFINE_ERROR_FACTORY(UnimplementedError, kUnimplemented)
EPD_DEFINE_ERROR_FACTORY(CancelledError, kCancelled)
#undef EPD_DEFINE_ERROR_FACTORY

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = InternalError("StatusOr constructed from an OK status");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  // Every accessor aborts with the status message when there is no value.
  T& value() & { return Checked(); }
  const T& value() const& { return Checked(); }
  T&& value() && { return std::move(Checked()); }
  T& operator*() & { return Checked(); }
  const T& operator*() const& { return Checked(); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &Checked(); }

 private:
  T& Checked() {
    if (!value_.has_value()) DieOfBadStatusOrAccess(status_);
    return *value_;
  }
  const T& Checked() const {
    if (!value_.has_value()) DieOfBadStatusOrAccess(status_);
    return *value_;
  }

  Status status_;
  std::optional<T> value_;
};

#define EPD_STATUS_CONCAT_INNER(a, b) a##b
#define EPD_STATUS_CONCAT(a, b) EPD_STATUS_CONCAT_INNER(a, b)

#define EPD_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::epd::Status epd_status_ = (expr);        \
    if (!epd_status_.ok()) return epd_status_; \
  } while (0)

#define EPD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

#define EPD_ASSIGN_OR_RETURN(lhs, expr) \
  EPD_ASSIGN_OR_RETURN_IMPL(EPD_STATUS_CONCAT(epd_statusor_, __LINE__), lhs, expr)

}  // namespace epd
