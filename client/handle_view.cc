#include "client/epd/handle_view.h"

#include "client/epd/tensor.h"
#include "common/proto_dtype.h"

namespace epd {

StatusOr<std::unique_ptr<HandleView>> HandleView::Open(const v1::HandleInfo& info) {
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<MappedRegion> region, MapMemorySource(info.source()));
  return Open(info, std::move(region));
}

StatusOr<std::unique_ptr<HandleView>> HandleView::Open(const v1::HandleInfo& info,
                                                       std::unique_ptr<MappedRegion> region) {
  const v1::HandleBuffers& b = info.buffers();
  if (b.total_bytes() > info.source().size() || b.total_bytes() > region->size()) {
    return InternalError("handle {}: buffers need {} bytes, the exported region has {} ({} mapped)",
                         info.handle_id(), b.total_bytes(), info.source().size(), region->size());
  }
  auto view = std::unique_ptr<HandleView>(new HandleView());
  view->info_ = info;
  const v1::GroupConfig& config = info.config();
  const v1::DType recv_dtype =
      config.dispatch_dtype() == v1::DTYPE_FP8_E4M3 ? v1::DTYPE_FP8_E4M3 : config.dtype();
  view->row_bytes_ = static_cast<size_t>(config.hidden()) * ProtoDTypeSize(recv_dtype);
  if (recv_dtype == v1::DTYPE_FP8_E4M3) {
    view->scale_row_bytes_ = static_cast<size_t>(config.hidden() / 128) *
                             (config.scale_format() == v1::SCALE_FORMAT_UE8M0 ? 1 : 4);
  }
  view->region_ = std::move(region);
  return view;
}

v1::TensorRef HandleView::RecvXRef() const {
  return MakeTensorRef(buffer_id(), info_.buffers().recv_x_offset(),
                       fp8_dispatch() ? v1::DTYPE_FP8_E4M3 : config().dtype(),
                       {recv_rows(), config().hidden()});
}

v1::TensorRef HandleView::RecvScalesRef() const {
  return MakeTensorRef(buffer_id(), info_.buffers().recv_scales_offset(),
                       ue8m0_scales() ? v1::DTYPE_UINT8 : v1::DTYPE_FP32,
                       {recv_rows(), config().hidden() / 128});
}

}  // namespace epd
