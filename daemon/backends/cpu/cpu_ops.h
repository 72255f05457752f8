// The cpu backend's op bodies, run on a rank's lane (cpu_backend.cc enqueues them): the checks
// of a tensor or a fence page, the fence wait, and dispatch / combine within one daemon (the
// ranks meet in the group's rendezvous) or across daemons (spanning_ops.h, through the rank's
// gloo link).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "daemon/backends/cpu/cpu_objects.h"

namespace epd::cpu {

// Fails an op whose memory a client truncated while the daemon had it mapped: the daemon
// then read or wrote zero pages instead (shm_fault_guard.h), so the result is meaningless.
Status CheckIntact(const void* data, std::string_view what);
// Weights scale expert outputs in Combine (routing_errors.h); the cuda backend checks them in
// its routing kernel.
Status CheckFiniteWeights(const TensorView& weights, int num_tokens, int top_k);
// The core checks tensors before ops reach a backend; callers that drive the backend
// directly (tests) get the same protection against a short or mistyped tensor.
Status CheckTokenRows(const CpuHandle& me, const TensorView& t, std::string_view op,
                      std::string_view field);
// Dispatch's x: token rows, or with fp8 dispatch pre-quantized e4m3 rows with x_scales.
Status CheckDispatchInput(const CpuHandle& me, const DispatchArgs& args);

// Waits until the fence counter reaches `value`, bounded by `timeout`; fails at once on a
// truncated page or a shutdown.
Status WaitCounter(int node_rank, uint64_t* counter_word, uint64_t value,
                   std::chrono::milliseconds timeout, const std::atomic<bool>& shutting_down);

// What a rank shows its peers for one op: the handle it runs the op on (a rank may hold one
// per layer) and its tensor (dispatch: x; combine: its expert output).
struct RankPart {
  CpuHandle* handle;
  const void* tensor;
  const void* scales = nullptr;  // dispatch of pre-quantized fp8 x: its x_scales
};

// Within one daemon, op `seq`: meet the peers, fill this rank's receive buffers (combine: its
// output), wait until no peer still reads this rank's tokens.
Status RunDispatch(CpuHandle& me, uint64_t seq, const RankPart& mine,
                   std::chrono::milliseconds timeout);
Status RunCombine(CpuHandle& me, uint64_t seq, const RankPart& mine, void* out,
                  std::chrono::milliseconds timeout);
// Spanning groups: this rank exchanges with every group rank through its link; `abandon`
// non-OK gives the op up and fails it on the peers.
Status RunSpanningDispatch(CpuHandle& me, const void* x, const void* x_scales, Status abandon,
                           std::chrono::milliseconds timeout);
Status RunSpanningCombine(CpuHandle& me, const void* expert_out, void* out, Status abandon,
                          std::chrono::milliseconds timeout);

}  // namespace epd::cpu
