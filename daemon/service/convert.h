// Translation between the wire format (epd.v1 protos, grpc::Status) and the core's structs.
//
// Everything a request carries is checked here before the core sees it; errors are
// INVALID_ARGUMENT naming the field path and its value ("x.dtype = DTYPE_UNSPECIFIED ...").
// Defaults of the public API are applied here: an empty GroupConfig.ranks means
// 0..world_size-1, UNSPECIFIED dtype / layout / algorithm mean bf16 / expert-major /
// low-latency.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/engine.h"
#include "epd/v1/epd.pb.h"

namespace epd::service {

grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

// Tensor dtypes must be given; token/group dtypes default to bf16 (FromProtoGroupDType).
StatusOr<DType> FromProto(v1::DType dtype, std::string_view field);
v1::DType ToProto(DType dtype);

StatusOr<GroupConfig> FromProto(const v1::GroupConfig& config, std::string_view field);
v1::GroupConfig ToProto(const GroupConfig& config);

StatusOr<TensorRef> FromProto(const v1::TensorRef& tensor, std::string_view field);
StatusOr<MemorySource> FromProto(const v1::MemorySource& source, std::string_view field);
v1::MemorySource ToProto(const MemorySource& source);
OpOptions FromProto(const v1::OpOptions& options);

// Op requests: the core request plus its options. Session ids are not checked here.
Status FromProto(const v1::UpdateHandleRequest& request, UpdateRequest* out, OpOptions* options,
                 std::string_view field = "");
Status FromProto(const v1::DispatchRequest& request, DispatchRequest* out, OpOptions* options,
                 std::string_view field = "");
Status FromProto(const v1::CombineRequest& request, CombineRequest* out, OpOptions* options,
                 std::string_view field = "");

v1::HandleBuffers ToProto(const HandleLayout& layout);
void ToProto(const HandleInfo& handle, v1::HandleInfo* out);
void ToProto(const DataPlaneInfo& info, v1::DataPlaneInfo* out);
void ToProto(const EngineStats& stats, v1::Stats* out);
void ToProto(const GroupSummary& group, v1::GroupSummary* out);
void ToProto(const NodeDescription& node, const std::vector<GroupSummary>& groups,
             std::string_view daemon_version, v1::NodeInfo* out);

}  // namespace epd::service
