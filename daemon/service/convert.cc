#include "daemon/service/convert.h"

#include <algorithm>
#include <chrono>

#include "common/limits.h"
#include "daemon/cluster/cluster_proto.h"

namespace epd::service {
namespace {

// "dispatch" + "x" -> "dispatch.x"; "" + "x" -> "x".
std::string Join(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  return fmt::format("{}.{}", prefix, name);
}

}  // namespace

StatusOr<DType> FromProto(v1::DType dtype, std::string_view field) {
  return DTypeFromProto(dtype, field);
}

v1::DType ToProto(DType dtype) { return DTypeToProto(dtype); }

StatusOr<GroupConfig> FromProto(const v1::GroupConfig& proto, std::string_view field) {
  GroupConfig config;
  config.name = proto.name();
  if (proto.world_size() > kMaxWorldSize || proto.ranks_size() > kMaxWorldSize) {
    return InvalidArgumentError("{} = {} ({} ranks listed): a group has at most {} ranks",
                                Join(field, "world_size"), proto.world_size(), proto.ranks_size(),
                                kMaxWorldSize);
  }
  if (proto.ranks_size() > 0) {
    config.ranks.assign(proto.ranks().begin(), proto.ranks().end());
    if (proto.world_size() != 0 && proto.world_size() != proto.ranks_size()) {
      return InvalidArgumentError("{} = {} contradicts {}, which lists {} ranks",
                                  Join(field, "world_size"), proto.world_size(),
                                  Join(field, "ranks"), proto.ranks_size());
    }
  } else {
    if (proto.world_size() <= 0) {
      return InvalidArgumentError("{} = {} must be >= 1 when {} is empty",
                                  Join(field, "world_size"), proto.world_size(),
                                  Join(field, "ranks"));
    }
    for (int r = 0; r < proto.world_size(); ++r) config.ranks.push_back(r);
  }
  config.experts = proto.experts();
  config.hidden = proto.hidden();
  config.max_tokens_per_rank = proto.max_tokens_per_rank();
  config.top_k = proto.top_k();
  config.expert_capacity = proto.expert_capacity();
  config.recv_capacity = proto.recv_capacity();
  config.sm_budget = proto.sm_budget();
  config.spans_nodes = proto.spans_nodes();
  if (proto.dtype() != v1::DTYPE_UNSPECIFIED) {
    EPD_ASSIGN_OR_RETURN(config.dtype, FromProto(proto.dtype(), Join(field, "dtype")));
  }
  if (proto.dispatch_dtype() == v1::DTYPE_FP8_E4M3) {
    config.dispatch_format = DispatchFormat::kFp8E4m3;
  } else if (proto.dispatch_dtype() != v1::DTYPE_UNSPECIFIED &&
             proto.dispatch_dtype() != ToProto(config.dtype)) {
    return InvalidArgumentError("{} = {} must be unset, the token dtype ({}) or DTYPE_FP8_E4M3",
                                Join(field, "dispatch_dtype"),
                                v1::DType_Name(proto.dispatch_dtype()), DTypeName(config.dtype));
  }
  switch (proto.scale_format()) {
    case v1::SCALE_FORMAT_UNSPECIFIED:
    case v1::SCALE_FORMAT_FP32:
      config.scale_format = ScaleFormat::kFp32;
      break;
    case v1::SCALE_FORMAT_UE8M0:
      config.scale_format = ScaleFormat::kUe8m0;
      break;
    default:
      return InvalidArgumentError("{} = {} is not a known ScaleFormat", Join(field, "scale_format"),
                                  static_cast<int>(proto.scale_format()));
  }
  switch (proto.layout()) {
    case v1::LAYOUT_UNSPECIFIED:
    case v1::LAYOUT_EXPERT_MAJOR:
      config.layout = Layout::kExpertMajor;
      break;
    case v1::LAYOUT_RANK_MAJOR:
      config.layout = Layout::kRankMajor;
      break;
    default:
      return InvalidArgumentError("{} = {} is not a known Layout", Join(field, "layout"),
                                  static_cast<int>(proto.layout()));
  }
  switch (proto.algorithm()) {
    case v1::ALGORITHM_UNSPECIFIED:
    case v1::ALGORITHM_LOW_LATENCY:
      config.algorithm = Algorithm::kLowLatency;
      break;
    case v1::ALGORITHM_HIGH_THROUGHPUT:
      config.algorithm = Algorithm::kHighThroughput;
      break;
    case v1::ALGORITHM_AUTO:
      config.algorithm = Algorithm::kAuto;
      break;
    default:
      return InvalidArgumentError("{} = {} is not a known Algorithm", Join(field, "algorithm"),
                                  static_cast<int>(proto.algorithm()));
  }
  config.ResolveAlgorithm();
  return config;
}

v1::GroupConfig ToProto(const GroupConfig& config) {
  v1::GroupConfig proto;
  proto.set_name(config.name);
  for (int r : config.ranks) proto.add_ranks(r);
  proto.set_world_size(config.world_size());
  proto.set_spans_nodes(config.spans_nodes);
  proto.set_experts(config.experts);
  proto.set_hidden(config.hidden);
  proto.set_max_tokens_per_rank(config.max_tokens_per_rank);
  proto.set_top_k(config.top_k);
  proto.set_dtype(ToProto(config.dtype));
  proto.set_algorithm(config.algorithm == Algorithm::kHighThroughput ? v1::ALGORITHM_HIGH_THROUGHPUT
                                                                     : v1::ALGORITHM_LOW_LATENCY);
  proto.set_layout(config.layout == Layout::kRankMajor ? v1::LAYOUT_RANK_MAJOR
                                                       : v1::LAYOUT_EXPERT_MAJOR);
  // The effective capacities and SM budget, so clients need not know the defaults (each only
  // where its algorithm uses it, so the answer is a valid request again).
  if (config.high_throughput()) {
    proto.set_recv_capacity(config.recv_row_capacity());
    proto.set_sm_budget(config.effective_sm_budget());
  } else {
    proto.set_expert_capacity(config.capacity());
  }
  // Effective payload too: the token dtype unless fp8.
  proto.set_dispatch_dtype(ToProto(config.recv_dtype()));
  if (config.fp8_dispatch()) {
    proto.set_scale_format(config.scale_format == ScaleFormat::kUe8m0 ? v1::SCALE_FORMAT_UE8M0
                                                                      : v1::SCALE_FORMAT_FP32);
  }
  return proto;
}

StatusOr<TensorRef> FromProto(const v1::TensorRef& proto, std::string_view field) {
  // Ids, shape and placement are the engine's to check (op_validation.h).
  TensorRef tensor;
  tensor.buffer_id = proto.buffer_id();
  tensor.offset_bytes = proto.offset_bytes();
  EPD_ASSIGN_OR_RETURN(tensor.dtype, FromProto(proto.dtype(), Join(field, "dtype")));
  tensor.shape.assign(proto.shape().begin(), proto.shape().end());
  return tensor;
}

StatusOr<MemorySource> FromProto(const v1::MemorySource& proto, std::string_view field) {
  MemorySource source;
  switch (proto.location_case()) {
    case v1::MemorySource::kShmName:
      source.kind = MemorySource::Kind::kHostShm;
      source.shm_name = proto.shm_name();
      break;
    case v1::MemorySource::kCudaIpcHandle:
      source.kind = MemorySource::Kind::kCudaIpc;
      source.ipc_handle = proto.cuda_ipc_handle();
      break;
    default:
      return InvalidArgumentError("{} is not set (shm_name or cuda_ipc_handle)",
                                  Join(field, "location"));
  }
  source.device = proto.device();
  source.device_uuid = proto.device_uuid();
  source.offset = proto.offset();
  source.size = proto.size();  // sizes and names are the engine's to check
  return source;
}

v1::MemorySource ToProto(const MemorySource& source) {
  v1::MemorySource proto;
  if (source.kind == MemorySource::Kind::kCudaIpc) {
    proto.set_cuda_ipc_handle(source.ipc_handle);
  } else {
    proto.set_shm_name(source.shm_name);
  }
  proto.set_device(source.device);
  proto.set_device_uuid(source.device_uuid);
  proto.set_offset(source.offset);
  proto.set_size(source.size);
  return proto;
}

OpOptions FromProto(const v1::OpOptions& proto) {
  OpOptions options;
  // fence_id 0 means "no fence" (proto3 cannot tell an unset message from a zero one).
  if (proto.wait().fence_id() != 0)
    options.wait = FenceOp{proto.wait().fence_id(), proto.wait().value()};
  if (proto.signal().fence_id() != 0) {
    options.signal = FenceOp{proto.signal().fence_id(), proto.signal().value()};
  }
  options.blocking = proto.blocking();
  return options;
}

Status FromProto(const v1::UpdateHandleRequest& request, UpdateRequest* out, OpOptions* options,
                 std::string_view field) {
  out->handle_id = request.handle_id();
  if (!request.has_topk_idx()) {
    return InvalidArgumentError("{} is required", Join(field, "topk_idx"));
  }
  EPD_ASSIGN_OR_RETURN(out->topk_idx, FromProto(request.topk_idx(), Join(field, "topk_idx")));
  if (request.has_topk_weights() && request.topk_weights().buffer_id() != 0) {
    EPD_ASSIGN_OR_RETURN(out->topk_weights,
                         FromProto(request.topk_weights(), Join(field, "topk_weights")));
  }
  out->rank = request.has_rank() ? request.rank() : -1;
  *options = FromProto(request.options());
  return OkStatus();
}

Status FromProto(const v1::DispatchRequest& request, DispatchRequest* out, OpOptions* options,
                 std::string_view field) {
  out->handle_id = request.handle_id();
  if (!request.has_x()) return InvalidArgumentError("{} is required", Join(field, "x"));
  EPD_ASSIGN_OR_RETURN(out->x, FromProto(request.x(), Join(field, "x")));
  if (request.has_x_scales() && request.x_scales().buffer_id() != 0) {
    EPD_ASSIGN_OR_RETURN(out->x_scales, FromProto(request.x_scales(), Join(field, "x_scales")));
  }
  out->rank = request.has_rank() ? request.rank() : -1;
  *options = FromProto(request.options());
  return OkStatus();
}

Status FromProto(const v1::CombineRequest& request, CombineRequest* out, OpOptions* options,
                 std::string_view field) {
  out->handle_id = request.handle_id();
  if (request.has_expert_out() && request.expert_out().buffer_id() != 0) {
    EPD_ASSIGN_OR_RETURN(out->expert_out,
                         FromProto(request.expert_out(), Join(field, "expert_out")));
  }
  if (!request.has_out()) return InvalidArgumentError("{} is required", Join(field, "out"));
  EPD_ASSIGN_OR_RETURN(out->out, FromProto(request.out(), Join(field, "out")));
  out->rank = request.has_rank() ? request.rank() : -1;
  *options = FromProto(request.options());
  return OkStatus();
}

v1::HandleBuffers ToProto(const HandleLayout& layout) {
  v1::HandleBuffers proto;
  proto.set_recv_rows(layout.recv_rows);
  proto.set_recv_x_offset(layout.recv_x_offset);
  proto.set_recv_src_offset(layout.recv_src_offset);
  proto.set_recv_weights_offset(layout.recv_weights_offset);
  proto.set_recv_topk_idx_offset(layout.recv_topk_idx_offset);
  proto.set_recv_topk_weights_offset(layout.recv_topk_weights_offset);
  proto.set_recv_counts_offset(layout.recv_counts_offset);
  proto.set_recv_offsets_offset(layout.recv_offsets_offset);
  proto.set_recv_scales_offset(layout.recv_scales_offset);
  proto.set_recv_rank_counts_offset(layout.recv_rank_counts_offset);
  proto.set_recv_rank_offsets_offset(layout.recv_rank_offsets_offset);
  proto.set_expert_rows_offset(layout.expert_rows_offset);
  proto.set_expert_rows_entries(layout.expert_rows_entries);
  proto.set_total_bytes(layout.exported_bytes);  // what the frontend maps
  return proto;
}

void ToProto(const HandleInfo& handle, v1::HandleInfo* out) {
  out->set_handle_id(handle.id);
  out->set_name(handle.name);
  out->set_group(handle.group);
  out->set_group_rank(handle.group_rank);
  out->set_persistent(handle.persistent);
  out->set_buffer_id(handle.buffer_id);
  *out->mutable_source() = ToProto(handle.source);
  *out->mutable_buffers() = ToProto(handle.layout);
  *out->mutable_config() = ToProto(handle.config);
  out->set_held_bytes(handle.held_bytes);
}

void ToProto(const DataPlaneInfo& info, v1::DataPlaneInfo* out) {
  out->set_handle_id(info.handle_id);
  out->set_group_rank(info.group_rank);
  *out->mutable_config() = ToProto(info.config);
  *out->mutable_buffers() = ToProto(info.layout);
  *out->mutable_private_region() = ToProto(info.private_region);
  const HandlePrivateOffsets& p = info.private_offsets;
  v1::HandlePrivateBuffers* priv = out->mutable_private_buffers();
  priv->set_topk_idx_offset(p.topk_idx);
  priv->set_topk_weights_offset(p.topk_weights);
  priv->set_expert_counts_offset(p.expert_counts);
  priv->set_slot_offset(p.slot);
  priv->set_local_rank_offset(p.local_rank);
  priv->set_bound_tokens_offset(p.bound_tokens);
  priv->set_total_bytes(p.bytes);
  priv->set_route_scratch_offset(p.route_scratch);
  priv->set_route_scratch_bytes(p.route_scratch_bytes);
  priv->set_dest_row_offset(p.dest_row);
  priv->set_dest_counts_offset(p.dest_counts);
  for (const DataPlanePeer& peer : info.peers) {
    v1::DataPlanePeer* proto = out->add_peers();
    proto->set_group_rank(peer.group_rank);
    proto->set_device(peer.node_rank);
    *proto->mutable_recv() = ToProto(peer.recv);
    *proto->mutable_sync() = ToProto(peer.sync);
    proto->set_handle_slot(peer.handle_slot);
  }
  out->set_sync_area_bytes(info.sync_area_bytes);
  *out->mutable_state_page() = ToProto(info.state_page);
  out->set_epoch(info.epoch);
  out->set_sequence_base(info.sequence_base);
  out->set_timeout_ns(info.timeout_ns);
  out->set_max_blocks(info.max_blocks);
}

namespace {
void ToProto(const OpCounters& counters, v1::OpStats* out) {
  out->set_completed(counters.completed);
  out->set_failed(counters.failed);
  out->set_total_us(counters.total_us);
}
}  // namespace

void ToProto(const SessionSummary& session, Clock::time_point now, v1::SessionSummary* out) {
  out->set_session_id(session.id);
  out->set_rank(session.rank);
  out->set_client_name(session.client_name);
  out->set_unary(session.unary);
  out->set_peer_pid(session.peer.pid);
  out->set_peer_uid(session.peer.uid);
  out->set_peer_gid(session.peer.gid);
  const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - session.opened);
  out->set_age_ms(static_cast<uint64_t>(std::max<int64_t>(age.count(), 0)));
  out->set_ops_completed(session.ops_completed);
  out->set_ops_failed(session.ops_failed);
  out->set_ops_in_flight(session.ops_in_flight);
  out->set_ops_running(session.ops_running);
}

void ToProto(const EngineStats& stats, v1::Stats* out) {
  out->set_sessions_open(stats.sessions_open);
  out->set_sessions_total(stats.sessions_total);
  out->set_allocations(stats.allocations);
  out->set_frees(stats.frees);
  out->set_live_bytes(stats.live_bytes);
  ToProto(stats.update, out->mutable_update());
  ToProto(stats.dispatch, out->mutable_dispatch());
  ToProto(stats.combine, out->mutable_combine());
}

void ToProto(const GroupSummary& group, v1::GroupSummary* out) {
  *out->mutable_config() = ToProto(group.config);
  out->set_persistent(group.persistent);
  out->set_handles(group.handles);
  for (const RankTransportState& rank : group.transport) {
    v1::RankTransport* proto = out->add_transport();
    proto->set_group_rank(rank.group_rank);
    proto->set_formed(rank.formed);
    proto->set_generation(rank.generation);
    proto->set_formations(rank.formations);
    proto->set_failures(rank.failures);
    proto->set_last_failure(rank.last_failure);
    if (rank.failures > 0) {
      proto->set_last_failure_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          rank.last_failure_at.time_since_epoch())
                                          .count());
    }
  }
}

// NOTE: the core's ComputeMode mirrors the proto enum value for value.
static_assert(static_cast<int>(ComputeMode::kDefault) == v1::COMPUTE_MODE_DEFAULT &&
              static_cast<int>(ComputeMode::kExclusiveProcess) ==
                  v1::COMPUTE_MODE_EXCLUSIVE_PROCESS &&
              static_cast<int>(ComputeMode::kProhibited) == v1::COMPUTE_MODE_PROHIBITED &&
              static_cast<int>(ComputeMode::kUnknown) == v1::COMPUTE_MODE_UNSPECIFIED);

void ToProto(const NodeDescription& node, const std::vector<GroupSummary>& groups,
             std::string_view daemon_version, v1::NodeInfo* out) {
  out->set_daemon_version(std::string(daemon_version));
  out->set_backend(node.backend);
  out->set_ranks(node.ranks);
  for (const auto& gpu : node.gpus) {
    auto* proto = out->add_gpus();
    proto->set_index(gpu.index);
    proto->set_name(gpu.name);
    proto->set_uuid(gpu.uuid);
    proto->set_total_memory_bytes(gpu.total_memory_bytes);
    proto->set_compute_capability(gpu.compute_capability);
    proto->set_mps_active(gpu.mps_active);
    proto->set_compute_mode(static_cast<v1::ComputeMode>(gpu.compute_mode));
  }
  out->set_nccl_version(node.nccl_version);
  if (node.cluster.has_value()) {
    v1::ClusterInfo* cluster = out->mutable_cluster();
    cluster->set_node_rank(node.cluster->node_rank);
    cluster->set_nodes(node.cluster->nodes);
    cluster->set_ranks_per_node(node.cluster->ranks_per_node);
    cluster->set_leader(node.cluster->leader);
    cluster->set_store_keys(node.cluster->store_keys);
    cluster->set_refused_calls(node.cluster->refused_calls);
    v1::ClusterView members;
    cluster::ToProto(*node.cluster, &members);
    *cluster->mutable_members() = members.members();
  }
  // NOTE: bounded so that GetNodeInfo always fits the default 4 MB message limit.
  for (const auto& group : groups) {
    if (out->groups_size() == static_cast<int>(kMaxGroupsPerAnswer)) {
      out->set_groups_omitted(out->groups_omitted() + 1);
    } else {
      *out->add_groups() = ToProto(group.config);
    }
  }
}

}  // namespace epd::service
