#include "daemon/backends/cpu/cpu_ops.h"

#include <cmath>
#include <thread>

#include "common/routing_errors.h"
#include "daemon/backends/cpu/shm_fault_guard.h"

namespace epd::cpu {
namespace {

const RankPart& PartOf(const void* part) { return *static_cast<const RankPart*>(part); }

Status CheckRows(const CpuHandle& me, const TensorView& t, std::string_view op,
                 std::string_view field, DType dtype, int64_t columns) {
  const GroupConfig& c = me.config();
  const int n = me.num_tokens();
  if (t.dtype != dtype || t.shape.size() != 2 || t.shape[0] < n || t.shape[1] != columns ||
      (n > 0 && t.data == nullptr)) {
    return InvalidArgumentError("{} of group '{}': {} must be {} [>= {}, {}]", op, c.name, field,
                                DTypeName(dtype), n, columns);
  }
  return OkStatus();
}

// What a collective fails with when its rank's last UpdateHandle failed on the stream.
Status RoutingFailure(const CpuHandle& me) {
  if (me.routing_status().ok()) return OkStatus();
  return FailedPreconditionError("the last UpdateHandle failed: {}", me.routing_status().message());
}

// A collective on routing whose binding failed on the stream: the peers fail at once too.
Status AbandonIfRoutingFailed(CpuHandle& me, uint64_t seq, CollectiveKind kind) {
  Status failed = RoutingFailure(me);
  if (!failed.ok()) me.group().rendezvous().Abandon(me.group_rank(), seq, kind, failed);
  return failed;
}

}  // namespace

Status CheckIntact(const void* data, std::string_view what) {
  if (data == nullptr || !ShmFaultGuard::BrokenAt(data, 1)) return OkStatus();
  return FailedPreconditionError(
      "{}: its shared memory object was truncated while the daemon had it mapped; release "
      "it and register (or create) it again",
      what);
}

Status CheckFiniteWeights(const TensorView& weights, int num_tokens, int top_k) {
  const auto* w = static_cast<const float*>(weights.data);
  if (w == nullptr) return OkStatus();
  for (int t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const float value = w[static_cast<size_t>(t) * top_k + k];
      if (!std::isfinite(value)) return NonFiniteWeightError(t, k, value);
    }
  }
  return OkStatus();
}

Status CheckTokenRows(const CpuHandle& me, const TensorView& t, std::string_view op,
                      std::string_view field) {
  return CheckRows(me, t, op, field, me.config().dtype, me.config().hidden);
}
Status CheckDispatchInput(const CpuHandle& me, const DispatchArgs& args) {
  const GroupConfig& c = me.config();
  if (args.x_scales.data == nullptr) return CheckTokenRows(me, args.x, "dispatch", "x");
  if (!c.fp8_dispatch()) {
    return InvalidArgumentError(
        "dispatch of group '{}': x_scales is set, but the group dispatches {}", c.name,
        DTypeName(c.dtype));
  }
  EPD_RETURN_IF_ERROR(CheckRows(me, args.x, "dispatch", "x", DType::kFp8E4m3, c.hidden));
  return CheckRows(me, args.x_scales, "dispatch", "x_scales", c.scale_dtype(), c.scale_blocks());
}

Status WaitCounter(int node_rank, uint64_t* counter_word, uint64_t value,
                   std::chrono::milliseconds timeout, const std::atomic<bool>& shutting_down) {
  std::atomic_ref<uint64_t> counter(*counter_word);
  const Deadline deadline = Clock::now() + timeout;
  auto pause = std::chrono::microseconds(1);
  while (counter.load(std::memory_order_acquire) < value) {
    // A truncated page reads zeros for ever: fail now rather than at the timeout.
    EPD_RETURN_IF_ERROR(CheckIntact(counter_word, fmt::format("rank {}: fence", node_rank)));
    if (shutting_down.load()) {
      return UnavailableError("rank {}: fence wait for value {} cancelled: epd is shutting down",
                              node_rank, value);
    }
    if (Clock::now() > deadline) {
      return DeadlineExceededError(
          "rank {}: fence wait for value {} timed out after {} ms (counter = {})", node_rank, value,
          timeout.count(), counter.load(std::memory_order_acquire));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(200));
  }
  return OkStatus();
}

Status RunDispatch(CpuHandle& me, uint64_t seq, const RankPart& mine,
                   std::chrono::milliseconds timeout) {
  EPD_RETURN_IF_ERROR(AbandonIfRoutingFailed(me, seq, CollectiveKind::kDispatch));
  CpuGroup& group = me.group();
  const GroupConfig& config = group.config();
  EPD_ASSIGN_OR_RETURN(
      std::vector<const void*> parts,
      group.rendezvous().Arrive(me.group_rank(), seq, CollectiveKind::kDispatch, &mine, timeout));
  std::vector<reference::SourceRank> sources;
  // NOTE: each part lives on its rank's stack until that rank leaves: what is needed after
  // Leave is copied out before it.
  std::vector<const void*> xs;
  for (const void* part : parts) {
    sources.push_back(PartOf(part).handle->Source(PartOf(part).tensor));
    sources.back().x_scales = PartOf(part).scales;
    xs.push_back(PartOf(part).tensor);
  }
  // Every rank sees the same counts, so every rank reports the same overflow.
  Status status = reference::CheckCapacity(config, sources);
  if (status.ok()) {
    reference::DispatchReceive(config, me.group_rank(), sources, me.receive());
    reference::ComputeSlots(config, me.group_rank(), sources, me.slots());
  }
  Status left = group.rendezvous().Leave(me.group_rank(), seq, timeout);
  if (status.ok()) status = left;
  // Every rank read every rank's x: a truncated one spoils all ranks' results.
  for (size_t s = 0; s < xs.size() && status.ok(); ++s) {
    status = CheckIntact(xs[s], fmt::format("dispatch: group rank {}'s x", s));
  }
  if (status.ok()) status = CheckIntact(me.exported().data(), "dispatch: the handle");
  return status;
}

Status RunSpanningDispatch(CpuHandle& me, const void* x, const void* x_scales, Status abandon,
                           std::chrono::milliseconds timeout) {
  if (abandon.ok()) abandon = RoutingFailure(me);
  reference::SourceRank mine = me.Source(x);
  mine.x_scales = x_scales;
  Status status =
      spanning::Dispatch(me.group().link(me.group_rank()), me.config(), me.group_rank(), mine,
                         abandon, me.receive(), me.slots(), &me.return_rows(), timeout);
  if (status.ok()) status = CheckIntact(x, "dispatch: x");
  if (status.ok()) status = CheckIntact(me.exported().data(), "dispatch: the handle");
  return status;
}

Status RunSpanningCombine(CpuHandle& me, const void* expert_out, void* out, Status abandon,
                          std::chrono::milliseconds timeout) {
  if (abandon.ok()) abandon = RoutingFailure(me);
  Status status = spanning::Combine(me.group().link(me.group_rank()), me.config(), me.group_rank(),
                                    me.Source(nullptr), abandon, me.slots(), me.return_rows(),
                                    expert_out, out, timeout);
  if (status.ok()) status = CheckIntact(expert_out, "combine: expert outputs");
  if (status.ok()) status = CheckIntact(out, "combine: out");
  return status;
}

Status RunCombine(CpuHandle& me, uint64_t seq, const RankPart& mine, void* out,
                  std::chrono::milliseconds timeout) {
  EPD_RETURN_IF_ERROR(AbandonIfRoutingFailed(me, seq, CollectiveKind::kCombine));
  CpuGroup& group = me.group();
  EPD_ASSIGN_OR_RETURN(
      std::vector<const void*> parts,
      group.rendezvous().Arrive(me.group_rank(), seq, CollectiveKind::kCombine, &mine, timeout));
  std::vector<const void*> expert_out;
  for (const void* part : parts) expert_out.push_back(PartOf(part).tensor);
  reference::Combine(group.config(), me.Source(nullptr), me.slots(), expert_out, out);
  Status status = group.rendezvous().Leave(me.group_rank(), seq, timeout);
  for (size_t s = 0; s < expert_out.size() && status.ok(); ++s) {
    status = CheckIntact(expert_out[s], fmt::format("combine: group rank {}'s expert outputs", s));
  }
  if (status.ok()) status = CheckIntact(out, "combine: out");
  return status;
}

}  // namespace epd::cpu
