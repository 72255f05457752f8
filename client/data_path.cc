#include "client/epd/data_path.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace epd {
namespace {

constexpr size_t kIpcHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t)

Status CheckIpcRegion(const v1::MemorySource& source, uint64_t needed, std::string_view field) {
  if (source.location_case() != v1::MemorySource::kCudaIpcHandle ||
      source.cuda_ipc_handle().size() != kIpcHandleBytes) {
    return InvalidArgumentError("{} is not a {}-byte CUDA IPC handle", field, kIpcHandleBytes);
  }
  if (source.size() < needed) {
    return InvalidArgumentError("{}.size = {} is smaller than the {} bytes placed in it", field,
                                source.size(), needed);
  }
  return OkStatus();
}

// One private buffer: 4-byte aligned and inside the region.
Status CheckBuffer(uint64_t offset, uint64_t bytes, uint64_t total, std::string_view name) {
  if (offset % 4 != 0 || offset > total || bytes > total - offset) {
    return InvalidArgumentError(
        "private_buffers.{}_offset = {} with {} bytes does not fit the region of {} bytes", name,
        offset, bytes, total);
  }
  return OkStatus();
}

// One receive buffer of a high-throughput handle: 4-byte aligned and inside every rank's
// receive region (whose size is checked against total_bytes).
Status CheckReceiveBuffer(uint64_t offset, uint64_t bytes, const v1::HandleBuffers& b,
                          std::string_view name) {
  const uint64_t total = b.total_bytes();
  if (offset % 4 != 0 || offset > total || bytes > total - offset) {
    return InvalidArgumentError(
        "buffers.{}_offset = {} with {} bytes does not fit the receive region of {} bytes", name,
        offset, bytes, total);
  }
  return OkStatus();
}

}  // namespace

std::string_view DataPathName(DataPath path) {
  return path == DataPath::kFrontendLaunched ? "frontend-launched" : "daemon-streams";
}

StatusOr<DataPath> ParseDataPath(std::string_view text, std::string_view field) {
  if (text == "daemon" || text == "daemon-streams") return DataPath::kDaemonStreams;
  if (text == "frontend" || text == "frontend-launched") return DataPath::kFrontendLaunched;
  return InvalidArgumentError(
      "{} = '{}': expected 'daemon-streams' (or 'daemon') or 'frontend-launched' (or "
      "'frontend')",
      field, text);
}

StatusOr<DataPath> ChooseDataPath(const v1::NodeInfo& node, int node_rank, bool client_has_cuda,
                                  std::optional<DataPath> requested) {
  const v1::GpuInfo* gpu = nullptr;
  for (const auto& candidate : node.gpus()) {
    if (candidate.index() == node_rank) gpu = &candidate;
  }
  if (requested == DataPath::kFrontendLaunched) {
    if (!client_has_cuda) {
      return FailedPreconditionError(
          "the frontend-launched data path needs a client built with CUDA");
    }
    if (node.backend() != "cuda" || gpu == nullptr) {
      return FailedPreconditionError(
          "the frontend-launched data path needs the daemon's cuda backend with node rank {} "
          "(backend '{}', {} GPUs)",
          node_rank, node.backend(), node.gpus_size());
    }
    return DataPath::kFrontendLaunched;
  }
  if (requested.has_value()) return *requested;
  if (!client_has_cuda || node.backend() != "cuda" || gpu == nullptr || gpu->mps_active()) {
    return DataPath::kDaemonStreams;
  }
  return DataPath::kFrontendLaunched;
}

StatusOr<std::optional<DataPath>> DataPathFromEnvironment() {
  const char* value = std::getenv("EPD_DATA_PATH");
  if (value == nullptr || *value == '\0') return std::optional<DataPath>();
  EPD_ASSIGN_OR_RETURN(DataPath path, ParseDataPath(value, "EPD_DATA_PATH"));
  return std::optional<DataPath>(path);
}

Status ValidateDataPlaneInfo(const v1::DataPlaneInfo& info) {
  const v1::GroupConfig& c = info.config();
  const int ranks = c.ranks_size();
  if (ranks < 1 || ranks > kMaxDataPlaneRanks) {
    return InvalidArgumentError("config.ranks has {} entries; a frontend-launched group has 1-{}",
                                ranks, kMaxDataPlaneRanks);
  }
  if (c.experts() < ranks || c.experts() % ranks != 0 || c.top_k() < 1 ||
      c.max_tokens_per_rank() < 1 || c.hidden() < 1) {
    return InvalidArgumentError(
        "config: experts = {}, top_k = {}, max_tokens_per_rank = {}, hidden = {} for {} ranks",
        c.experts(), c.top_k(), c.max_tokens_per_rank(), c.hidden(), ranks);
  }
  if (info.group_rank() < 0 || info.group_rank() >= ranks) {
    return InvalidArgumentError("group_rank = {} is outside [0, {})", info.group_rank(), ranks);
  }
  if (info.peers_size() != ranks) {
    return InvalidArgumentError("peers has {} entries, expected one per group rank ({})",
                                info.peers_size(), ranks);
  }
  const v1::HandlePrivateBuffers& p = info.private_buffers();
  EPD_RETURN_IF_ERROR(CheckIpcRegion(info.private_region(), p.total_bytes(), "private_region"));
  const uint64_t selections = uint64_t{static_cast<uint32_t>(c.max_tokens_per_rank())} *
                              static_cast<uint32_t>(c.top_k()) * 4;
  EPD_RETURN_IF_ERROR(CheckBuffer(p.topk_idx_offset(), selections, p.total_bytes(), "topk_idx"));
  EPD_RETURN_IF_ERROR(
      CheckBuffer(p.topk_weights_offset(), selections, p.total_bytes(), "topk_weights"));
  EPD_RETURN_IF_ERROR(CheckBuffer(p.expert_counts_offset(),
                                  uint64_t{static_cast<uint32_t>(c.experts())} * 4,
                                  p.total_bytes(), "expert_counts"));
  EPD_RETURN_IF_ERROR(CheckBuffer(p.slot_offset(), selections, p.total_bytes(), "slot"));
  EPD_RETURN_IF_ERROR(
      CheckBuffer(p.local_rank_offset(), selections, p.total_bytes(), "local_rank"));
  EPD_RETURN_IF_ERROR(CheckBuffer(p.bound_tokens_offset(), 4, p.total_bytes(), "bound_tokens"));
  EPD_RETURN_IF_ERROR(CheckBuffer(p.route_scratch_offset(), p.route_scratch_bytes(),
                                  p.total_bytes(), "route_scratch"));
  if (c.algorithm() == v1::ALGORITHM_HIGH_THROUGHPUT) {
    // Dispatch writes rows below recv_capacity only (more is its overflow error), and at most
    // recv_capacity * min(K, L) gather entries.
    const uint64_t capacity = static_cast<uint32_t>(std::max(c.recv_capacity(), 0));
    const uint64_t gather =
        capacity * static_cast<uint32_t>(std::min(c.top_k(), c.experts() / ranks));
    if (capacity < 1 || capacity > info.buffers().recv_rows() ||
        info.buffers().expert_rows_entries() < gather) {
      return InvalidArgumentError(
          "config.recv_capacity = {} does not fit buffers.recv_rows = {} and "
          "buffers.expert_rows_entries = {} (a high-throughput group needs 1 <= recv_capacity "
          "<= recv_rows and recv_capacity * min(top_k, local experts) entries)",
          c.recv_capacity(), info.buffers().recv_rows(), info.buffers().expert_rows_entries());
    }
    // The packed-row plan the routing bind writes and dispatch reads, and the receive
    // metadata dispatch writes on every rank.
    const uint64_t ranks_bytes = uint64_t{static_cast<uint32_t>(ranks)} * 4;
    EPD_RETURN_IF_ERROR(CheckBuffer(
        p.dest_row_offset(), uint64_t{static_cast<uint32_t>(c.max_tokens_per_rank())} * ranks_bytes,
        p.total_bytes(), "dest_row"));
    EPD_RETURN_IF_ERROR(
        CheckBuffer(p.dest_counts_offset(), ranks_bytes, p.total_bytes(), "dest_counts"));
    const v1::HandleBuffers& b = info.buffers();
    const uint64_t local_experts = static_cast<uint32_t>(c.experts() / ranks);
    EPD_RETURN_IF_ERROR(
        CheckReceiveBuffer(b.recv_rank_counts_offset(), ranks_bytes, b, "recv_rank_counts"));
    EPD_RETURN_IF_ERROR(
        CheckReceiveBuffer(b.recv_rank_offsets_offset(), ranks_bytes, b, "recv_rank_offsets"));
    EPD_RETURN_IF_ERROR(
        CheckReceiveBuffer(b.recv_counts_offset(), local_experts * 4, b, "recv_counts"));
    EPD_RETURN_IF_ERROR(
        CheckReceiveBuffer(b.recv_offsets_offset(), (local_experts + 1) * 4, b, "recv_offsets"));
    EPD_RETURN_IF_ERROR(
        CheckReceiveBuffer(b.expert_rows_offset(), b.expert_rows_entries() * 4, b, "expert_rows"));
  }
  if (info.sync_area_bytes() == 0) return InvalidArgumentError("sync_area_bytes = 0");
  for (int r = 0; r < ranks; ++r) {
    const v1::DataPlanePeer& peer = info.peers(r);
    if (peer.group_rank() != r) {
      return InvalidArgumentError("peers[{}].group_rank = {}, expected {}", r, peer.group_rank(), r);
    }
    if (peer.handle_slot() < 0 || peer.handle_slot() >= kMaxDataPlaneHandleSlots) {
      return InvalidArgumentError("peers[{}].handle_slot = {} is outside [0, {})", r,
                                  peer.handle_slot(), kMaxDataPlaneHandleSlots);
    }
    EPD_RETURN_IF_ERROR(CheckIpcRegion(peer.recv(), info.buffers().total_bytes(),
                                       "peers[" + std::to_string(r) + "].recv"));
    EPD_RETURN_IF_ERROR(CheckIpcRegion(peer.sync(), info.sync_area_bytes(),
                                       "peers[" + std::to_string(r) + "].sync"));
  }
  if (info.state_page().location_case() != v1::MemorySource::kShmName ||
      info.state_page().shm_name().empty()) {
    return InvalidArgumentError("state_page is not a shared memory object");
  }
  if (info.epoch() == 0) return InvalidArgumentError("epoch = 0: the group has no data plane");
  if (info.timeout_ns() == 0) return InvalidArgumentError("timeout_ns = 0: waits must be bounded");
  if (info.max_blocks() < 1) {
    return InvalidArgumentError("max_blocks = {} must be >= 1", info.max_blocks());
  }
  return OkStatus();
}

}  // namespace epd
