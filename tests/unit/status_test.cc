#include "common/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string_view>

#include "common/utf8.h"

namespace epd {
namespace {

StatusOr<int> Half(int value) {
  if (value % 2 != 0) return InvalidArgumentError("value = {} is odd", value);
  return value / 2;
}

Status Quarter(int value, int* out) {
  EPD_ASSIGN_OR_RETURN(int half, Half(value));
  EPD_ASSIGN_OR_RETURN(*out, Half(half));
  return OkStatus();
}

TEST(StatusTest, CodesMatchGrpcNumbering) {
  EXPECT_EQ(static_cast<int>(StatusCode::kInvalidArgument), 3);
  EXPECT_EQ(static_cast<int>(StatusCode::kDeadlineExceeded), 4);
  EXPECT_EQ(static_cast<int>(StatusCode::kNotFound), 5);
  EXPECT_EQ(static_cast<int>(StatusCode::kResourceExhausted), 8);
  EXPECT_EQ(static_cast<int>(StatusCode::kFailedPrecondition), 9);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnavailable), 14);
}

TEST(StatusTest, FactoriesFormatMessages) {
  Status status = NotFoundError("buffer_id = {} is unknown", 7);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "buffer_id = 7 is unknown");
  EXPECT_EQ(status.ToString(), "NOT_FOUND: buffer_id = 7 is unknown");
  EXPECT_EQ(status.WithContext("dispatch").message(), "dispatch: buffer_id = 7 is unknown");
  EXPECT_TRUE(OkStatus().WithContext("x").ok());
}

TEST(StatusTest, MacrosPropagateErrorsAndValues) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status status = Quarter(6, &out);  // 6 / 2 = 3 is odd
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "value = 3 is odd");
}

TEST(StatusTest, StatusOrFromOkStatusIsAnInternalError) {
  StatusOr<std::unique_ptr<int>> value = OkStatus();
  EXPECT_EQ(value.status().code(), StatusCode::kInternal);
}

// Reading the value of a failed StatusOr is a caller bug: it must stop the process with the
// status, not read an empty optional (a frontend that skipped ok() used to segfault).
TEST(StatusDeathTest, ValueOfAnErrorAbortsWithTheStatusMessage) {
  EXPECT_DEATH(Half(3).value(),
               "StatusOr::value\\(\\) on an error: INVALID_ARGUMENT: value = 3 is odd");
  const StatusOr<int> failed = NotFoundError("no daemon at {}", "unix:///nowhere");
  EXPECT_DEATH(static_cast<void>(*failed), "NOT_FOUND: no daemon at unix:///nowhere");
  StatusOr<std::unique_ptr<int>> empty = OkStatus();
  EXPECT_DEATH(static_cast<void>(empty->get()), "INTERNAL: StatusOr constructed from an OK status");
}

TEST(StatusTest, ValueOfASuccessIsTheValue) {
  EXPECT_EQ(Half(4).value(), 2);
  StatusOr<std::unique_ptr<int>> owned = std::make_unique<int>(7);
  std::unique_ptr<int> moved = std::move(owned).value();
  EXPECT_EQ(*moved, 7);
}

}  // namespace
}  // namespace epd

namespace epd {
namespace {

TEST(Utf8Test, CutsFallBetweenCharacters) {
  const std::string_view text =
      "a\xc3\xbc"
      "b";  // a, ü (two bytes), b
  EXPECT_EQ(Utf8StartAtOrBefore(text, 0), 0u);
  EXPECT_EQ(Utf8StartAtOrBefore(text, 1), 1u);
  EXPECT_EQ(Utf8StartAtOrBefore(text, 2), 1u);  // inside ü: back to its start
  EXPECT_EQ(Utf8StartAtOrBefore(text, 3), 3u);
  EXPECT_EQ(Utf8StartAtOrAfter(text, 2), 3u);  // inside ü: on to b
  EXPECT_EQ(Utf8StartAtOrAfter(text, 3), 3u);
  EXPECT_EQ(Utf8StartAtOrAfter(text, 4), 4u);  // the end
}

}  // namespace
}  // namespace epd
