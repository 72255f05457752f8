// Translation between the wire format (epd.v1 protos) and the core's structs; the
// grpc::Status and dtype mappings it uses are shared with the client (common/).
//
// Only what the core's structs cannot represent is refused here (a missing required message,
// an unknown enum value, world_size contradicting ranks), with INVALID_ARGUMENT naming the
// field path and its value ("x.dtype = DTYPE_UNSPECIFIED ..."). Semantic checks (ids,
// shapes, sizes, group constants) are the engine's validation layer's, done once.
// Defaults of the public API are applied here: an empty GroupConfig.ranks means
// 0..world_size-1, UNSPECIFIED dtype / layout / algorithm mean bf16 / expert-major /
// low-latency.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/grpc_status.h"
#include "common/proto_dtype.h"
#include "daemon/core/engine.h"
#include "epd/v1/epd.pb.h"

namespace epd::service {

// Groups in one GetNodeInfo or ListGroups answer; about 100 bytes each, far below the 4 MB
// message limit.
inline constexpr size_t kMaxGroupsPerAnswer = 1024;

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
// `now` gives the session's age.
void ToProto(const SessionSummary& session, Clock::time_point now, v1::SessionSummary* out);
void ToProto(const GroupSummary& group, v1::GroupSummary* out);
void ToProto(const NodeDescription& node, const std::vector<GroupSummary>& groups,
             std::string_view daemon_version, v1::NodeInfo* out);

}  // namespace epd::service
