// epd::DType <-> epd.v1.DType, shared by the daemon's service layer and the client library.
#pragma once

#include <cstddef>
#include <string_view>

#include "common/dtype.h"
#include "common/status.h"
#include "epd/v1/types.pb.h"

namespace epd {

// INVALID_ARGUMENT naming `field` and the value when `dtype` is UNSPECIFIED or unknown.
StatusOr<DType> DTypeFromProto(v1::DType dtype, std::string_view field);
v1::DType DTypeToProto(DType dtype);
// Bytes per element of a proto dtype; 0 when it is UNSPECIFIED or unknown.
size_t ProtoDTypeSize(v1::DType dtype);

}  // namespace epd
