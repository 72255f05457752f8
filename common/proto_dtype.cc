#include "common/proto_dtype.h"

namespace epd {

StatusOr<DType> DTypeFromProto(v1::DType dtype, std::string_view field) {
  switch (dtype) {
    case v1::DTYPE_BF16:
      return DType::kBf16;
    case v1::DTYPE_FP16:
      return DType::kFp16;
    case v1::DTYPE_FP32:
      return DType::kFp32;
    case v1::DTYPE_INT32:
      return DType::kInt32;
    case v1::DTYPE_INT64:
      return DType::kInt64;
    case v1::DTYPE_FP8_E4M3:
      return DType::kFp8E4m3;
    case v1::DTYPE_UINT8:
      return DType::kUint8;
    default: {
      const std::string_view name = v1::DType_IsValid(dtype)
                                        ? std::string_view(v1::DType_Name(dtype))
                                        : std::string_view("unknown");
      return InvalidArgumentError("{} = {} ({}): a tensor's dtype must be given", field, name,
                                  static_cast<int>(dtype));
    }
  }
}

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return v1::DTYPE_BF16;
    case DType::kFp16:
      return v1::DTYPE_FP16;
    case DType::kFp32:
      return v1::DTYPE_FP32;
    case DType::kInt32:
      return v1::DTYPE_INT32;
    case DType::kInt64:
      return v1::DTYPE_INT64;
    case DType::kFp8E4m3:
      return v1::DTYPE_FP8_E4M3;
    case DType::kUint8:
      return v1::DTYPE_UINT8;
  }
  return v1::DTYPE_UNSPECIFIED;
}

size_t ProtoDTypeSize(v1::DType dtype) {
  const StatusOr<DType> ours = DTypeFromProto(dtype, "dtype");
  return ours.ok() ? DTypeSize(*ours) : 0;
}

}  // namespace epd
