// RankRunner: one frontend rank of a MoE layer on the epd daemon. It opens a session for its
// rank, creates (or reuses) the group, creates its handle, registers one buffer holding x,
// topk_idx, topk_weights and out (POSIX shm on the cpu backend, CUDA IPC device memory on the
// cuda backend), and runs Update -> Dispatch -> experts -> Combine, blocking or fenced. On the
// cuda backend the experts run on a host copy of the received rows (an example, not a kernel).
// Dispatch and Combine are collective: every rank of the group must run the same iteration.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client/epd/client.h"
#include "client/examples/frontend_launch.h"
#include "client/examples/frontend_memory.h"
#include "client/examples/moe_math.h"

namespace epd::example {

struct RankRunnerOptions {
  std::string group;        // created with Problem::Config(group) unless it exists
  std::string handle_name;  // empty: an unnamed session-owned handle
  bool persistent_handle = false;
  bool persistent_group = false;
  bool int64_topk = false;  // topk_idx as int64 instead of int32
  // The frontend-launched data path: this process launches the kernels (cuda backend only);
  // RunLayer's `fenced` is then ignored.
  bool frontend_launched = false;
  // Frontend-launched only: capture each layer's ops in CUDA graphs once per token count and
  // replay them (LaunchTensors::graphs).
  bool graphs = false;
  std::chrono::milliseconds fence_timeout{30'000};
  // The node rank the session binds to when it differs from the group rank (a group that
  // spans daemons: group rank = node * ranks_per_node + session rank); -1: the group rank.
  int session_rank = -1;
  // cuda backend: the GPU (as this process numbers them) of the rank's tensors; -1: the
  // handle's device. Differs when the daemon sees other GPUs (its own CUDA_VISIBLE_DEVICES).
  int device = -1;
};

class RankRunner {
 public:
  static StatusOr<std::unique_ptr<RankRunner>> Create(Client& client, const Problem& problem,
                                                      int rank, RankRunnerOptions options);

  // Copies `in` into the shared buffer, runs one layer and leaves the result in out().
  // fenced: non-blocking ops ordered by fences (daemon -> frontend: completion; frontend ->
  // daemon: the experts are done); else every op is blocking.
  Status RunLayer(const RankInputs& in, const ExpertFactor& factor, bool fenced);
  // Copies `in` into the registered buffer and poisons out (RunLayer does it too).
  Status Stage(const RankInputs& in);
  // The experts on this rank's received rows, in place in the handle's recv_x.
  Status RunExpertsOnReceived(const ExpertFactor& factor);
  // RunLayer, then compares out() bit for bit with ExpectedOutput (INTERNAL naming the first
  // differing element on mismatch).
  Status RunAndCheck(const RankInputs& in, const ExpertFactor& factor, bool fenced);

  const Problem& problem() const { return problem_; }
  int rank() const { return rank_; }
  Session& session() { return *session_; }
  HandleView& view() { return *view_; }
  bool on_device() const { return memory_->shm() == nullptr; }
  // Layers that replayed CUDA graphs (RankRunnerOptions::graphs).
  int replayed_layers() const { return launch_ != nullptr ? launch_->replayed_layers() : 0; }
  // The registered shm object (cpu backend only).
  SharedMemoryBuffer& buffer() { return *memory_->shm(); }
  // What the registered buffer was registered as (shm name or CUDA IPC handle), either backend.
  v1::MemorySource buffer_source() const { return memory_->Source(); }
  uint64_t buffer_id() const { return buffer_id_; }
  uint64_t handle_id() const { return view_->handle_id(); }

  // TensorRefs into the registered buffer for n tokens.
  v1::TensorRef x_ref(int n) const;
  v1::TensorRef topk_ref(int n) const;
  v1::TensorRef weights_ref(int n) const;
  v1::TensorRef out_ref(int n) const;
  // fp8: pre-quantized x [n, H] e4m3 and its scales; expert_out [recv_rows, H] bf16.
  v1::TensorRef x_scales_ref(int n) const;
  v1::TensorRef expert_out_ref() const;
  // The Dispatch request of n tokens: x, or pre-quantized x + x_scales.
  v1::DispatchRequest DispatchRequestFor(int n, const v1::OpOptions& options) const;
  // The combine output of the last layer (a host copy on the cuda backend, taken by RunLayer).
  const void* out() const {
    return on_device() ? out_host_.data() : memory_->shm()->at<void>(out_offset_);
  }

 private:
  RankRunner() = default;
  Status RunOps(int n, const ExpertFactor& factor, bool fenced);

  Problem problem_;
  int rank_ = 0;
  RankRunnerOptions options_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<HandleView> view_;
  std::unique_ptr<FrontendMemory> memory_;
  std::unique_ptr<HandleView> host_view_;  // cuda backend: host copy of the exported region
  std::vector<uint8_t> out_host_;
  uint64_t buffer_id_ = 0;
  size_t x_offset_ = 0, topk_offset_ = 0, weights_offset_ = 0, out_offset_ = 0;
  size_t xq_offset_ = 0, x_scales_offset_ = 0, expert_out_offset_ = 0;  // fp8 only
  std::vector<uint8_t> expert_out_host_;                                // fp8 only
  std::unique_ptr<Fence> done_;   // daemon -> frontend: op completed
  std::unique_ptr<Fence> ready_;  // frontend -> daemon: expert outputs written
  std::unique_ptr<FrontendLaunch> launch_;  // frontend-launched path only
  uint64_t layers_ = 0;
};

}  // namespace epd::example
