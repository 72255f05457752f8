// The wire-side pieces of epd_common_grpc that daemon and client share: status codes and
// proto dtypes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/grpc_status.h"
#include "common/proto_dtype.h"

namespace epd {
namespace {

TEST(GrpcStatusTest, CodesAndMessagesMapOneToOne) {
  for (int code = 0; code <= 16; ++code) {
    Status status(static_cast<StatusCode>(code), code == 0 ? "" : "why");
    grpc::Status grpc_status = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(grpc_status.error_code()), code);
    Status back = FromGrpcStatus(grpc_status);
    EXPECT_EQ(back.code(), status.code());
    if (code != 0) {
      EXPECT_EQ(back.message(), "why");
    }
  }
}

TEST(GrpcStatusTest, LongMessagesTravelBoundedAndCutBetweenCharacters) {
  const std::string fits(kMaxAnswerMessageBytes, 'a');
  EXPECT_EQ(ToGrpcStatus(InvalidArgumentError("{}", fits)).error_message(), fits);
  // A client's 100 kB name quoted back: the head, then how much was left out.
  const std::string quoted = "group '" + std::string(100'000, 'l') + "' does not exist";
  const std::string sent = ToGrpcStatus(NotFoundError("{}", quoted)).error_message();
  EXPECT_LE(sent.size(), kMaxAnswerMessageBytes);
  EXPECT_EQ(sent.rfind("group 'lll", 0), 0u) << sent;
  EXPECT_NE(sent.find(" ... ("), std::string::npos) << sent;
  EXPECT_NE(sent.find(" more bytes)"), std::string::npos) << sent;
  // Two-byte characters: the cut never leaves half of one.
  std::string wide;
  while (wide.size() < 2 * kMaxAnswerMessageBytes) wide += "\xc3\xbc";
  const std::string cut = AnswerMessage(wide);
  const size_t head = cut.find(" ... (");
  ASSERT_NE(head, std::string::npos);
  EXPECT_EQ(head % 2, 0u) << "a character split at byte " << head;
  EXPECT_EQ(cut.substr(head), fmt::format(" ... ({} more bytes)", wide.size() - head));
}

TEST(ProtoDTypeTest, EveryDTypeRoundTripsWithItsSize) {
  for (DType dtype : {DType::kBf16, DType::kFp16, DType::kFp32, DType::kInt32, DType::kInt64}) {
    const v1::DType proto = DTypeToProto(dtype);
    EXPECT_NE(proto, v1::DTYPE_UNSPECIFIED) << DTypeName(dtype);
    auto back = DTypeFromProto(proto, "x.dtype");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, dtype);
    EXPECT_EQ(ProtoDTypeSize(proto), DTypeSize(dtype));
  }
  EXPECT_EQ(ProtoDTypeSize(v1::DTYPE_BF16), 2u);
  EXPECT_EQ(ProtoDTypeSize(v1::DTYPE_INT64), 8u);
}

TEST(ProtoDTypeTest, UnspecifiedOrUnknownNamesTheFieldAndHasNoSize) {
  auto unspecified = DTypeFromProto(v1::DTYPE_UNSPECIFIED, "dispatch.x.dtype");
  EXPECT_EQ(unspecified.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unspecified.status().message().find("dispatch.x.dtype = DTYPE_UNSPECIFIED"),
            std::string::npos)
      << unspecified.status().message();
  auto unknown = DTypeFromProto(static_cast<v1::DType>(77), "w.dtype");
  EXPECT_NE(unknown.status().message().find("w.dtype = unknown (77)"), std::string::npos)
      << unknown.status().message();
  EXPECT_EQ(ProtoDTypeSize(v1::DTYPE_UNSPECIFIED), 0u);
}

}  // namespace
}  // namespace epd
