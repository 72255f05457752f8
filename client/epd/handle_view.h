// HandleView: the exported region of a handle (CreateHandle / AttachHandle answer), mapped
// into this process, with typed pointers to its tensors (HandleBuffers offsets; semantics in
// docs/design.md, "Handle buffers").
//
// Expert-major: recv_x [L*C, H]; expert l's rows are [recv_offsets[l], + recv_counts[l]);
//               recv_src [L*C, 3] (src rank, src token, k); recv_weights [L*C].
// Rank-major:   recv_x [R*T, H], row s*T+t = token t of rank s; recv_topk_idx / _weights
//               [R*T, K]; recv_counts [R] tokens per source rank.
// High-throughput (config().algorithm() == ALGORITHM_HIGH_THROUGHPUT): recv_x [M, H] packed
//               by (source rank, token); recv_src [M, 2]; recv_topk_idx / _weights [M, K]
//               with local expert ids; recv_rank_counts / recv_rank_offsets [R];
//               recv_counts [L], recv_offsets [L + 1] into expert_rows [G] (expert l's rows
//               ascending). Combine: each row pre-reduced by the frontend, weight 1.
// Fp8 dispatch (config().dispatch_dtype() == DTYPE_FP8_E4M3), both layouts: recv_x holds e4m3
//               rows and recv_scales [recv_rows, H/128] their block scales (fp32, or ue8m0
//               exponent bytes: scale = 2^(byte - 127)); value ~= e4m3 * scale. Combine then
//               needs an expert_out tensor of the token dtype.
// Tensors that the group's layout does not have are nullptr.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "client/epd/mapped_region.h"
#include "common/status.h"
#include "epd/v1/epd.pb.h"

namespace epd {

class HandleView {
 public:
  static StatusOr<std::unique_ptr<HandleView>> Open(const v1::HandleInfo& info);
  // Views `region` (already mapped, or a host copy of the exported region) as `info` says.
  static StatusOr<std::unique_ptr<HandleView>> Open(const v1::HandleInfo& info,
                                                    std::unique_ptr<MappedRegion> region);

  const v1::HandleInfo& info() const { return info_; }
  const v1::GroupConfig& config() const { return info_.config(); }
  uint64_t handle_id() const { return info_.handle_id(); }
  // The exported region as a buffer of the session that created / attached the handle.
  uint64_t buffer_id() const { return info_.buffer_id(); }
  bool on_device() const { return region_->on_device(); }
  bool high_throughput() const {
    return config().algorithm() == v1::ALGORITHM_HIGH_THROUGHPUT;
  }
  // The low-latency expert-major layout (false for rank-major and high-throughput).
  bool expert_major() const {
    return config().layout() != v1::LAYOUT_RANK_MAJOR && !high_throughput();
  }

  int64_t recv_rows() const { return static_cast<int64_t>(info_.buffers().recv_rows()); }
  size_t row_bytes() const { return row_bytes_; }
  void* recv_x() const { return region_->at<void>(info_.buffers().recv_x_offset()); }
  void* recv_row(int64_t row) const {
    return static_cast<char*>(recv_x()) + static_cast<size_t>(row) * row_bytes_;
  }
  int32_t* recv_src() const {
    return Tensor<int32_t>(expert_major() || high_throughput(), &B::recv_src_offset);
  }
  float* recv_weights() const { return Tensor<float>(expert_major(), &B::recv_weights_offset); }
  int32_t* recv_topk_idx() const {
    return Tensor<int32_t>(!expert_major(), &B::recv_topk_idx_offset);
  }
  float* recv_topk_weights() const {
    return Tensor<float>(!expert_major(), &B::recv_topk_weights_offset);
  }
  int32_t* recv_counts() const { return Tensor<int32_t>(true, &B::recv_counts_offset); }
  int32_t* recv_offsets() const {
    return Tensor<int32_t>(expert_major() || high_throughput(), &B::recv_offsets_offset);
  }
  int32_t* recv_rank_counts() const {
    return Tensor<int32_t>(high_throughput(), &B::recv_rank_counts_offset);
  }
  int32_t* recv_rank_offsets() const {
    return Tensor<int32_t>(high_throughput(), &B::recv_rank_offsets_offset);
  }
  int32_t* expert_rows() const { return Tensor<int32_t>(high_throughput(), &B::expert_rows_offset); }
  bool fp8_dispatch() const { return config().dispatch_dtype() == v1::DTYPE_FP8_E4M3; }
  bool ue8m0_scales() const { return config().scale_format() == v1::SCALE_FORMAT_UE8M0; }
  // [recv_rows, H/128]: float* for fp32 scales, uint8_t* for ue8m0; nullptr without fp8.
  void* recv_scales() const { return Tensor<char>(fp8_dispatch(), &B::recv_scales_offset); }
  const void* recv_scales_row(int64_t row) const {
    return static_cast<const char*>(recv_scales()) + static_cast<size_t>(row) * scale_row_bytes_;
  }
  size_t scale_row_bytes() const { return scale_row_bytes_; }

  // recv_x as a TensorRef of the exported buffer (Combine's expert_out, in place; its dtype
  // is e4m3 with fp8 dispatch, which Combine refuses).
  v1::TensorRef RecvXRef() const;
  // recv_scales as a TensorRef (fp8 dispatch only).
  v1::TensorRef RecvScalesRef() const;

 private:
  using B = v1::HandleBuffers;
  HandleView() = default;
  template <typename T>
  T* Tensor(bool present, uint64_t (B::*offset)() const) const {
    return present ? region_->at<T>((info_.buffers().*offset)()) : nullptr;
  }

  v1::HandleInfo info_;
  size_t row_bytes_ = 0;  // of recv_x
  size_t scale_row_bytes_ = 0;
  std::unique_ptr<MappedRegion> region_;
};

}  // namespace epd
