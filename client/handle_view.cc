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
  view->row_bytes_ =
      static_cast<size_t>(info.config().hidden()) * ProtoDTypeSize(info.config().dtype());
  view->region_ = std::move(region);
  return view;
}

v1::TensorRef HandleView::RecvXRef() const {
  return MakeTensorRef(buffer_id(), info_.buffers().recv_x_offset(), config().dtype(),
                       {recv_rows(), config().hidden()});
}

}  // namespace epd
