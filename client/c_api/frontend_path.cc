// C API, CUDA builds: the frontend-launched data path of a handle (FrontendOps behind the
// epd_handle_update / _dispatch / _combine / _take_errors calls).
#include <cuda_runtime_api.h>

#include <thread>

#include "client/c_api/internal.h"
#include "client/epd/frontend_ops.h"
#include "common/cuda_check.h"
#include "common/cuda_device.h"

namespace epd::c_api {

struct FrontendPath {
  Session* session = nullptr;
  uint64_t handle_id = 0;
  int device = 0;
  std::unique_ptr<FrontendOps> ops;
};

namespace {

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

// The handle's kernels and mappings live on its GPU (cuda::OnDevice).
using cuda::OnDevice;

}  // namespace

void DestroyFrontendPath(FrontendPath* path) {
  if (path == nullptr) return;
  // Unmapping touches the handle's GPU's context.
  OnDevice(path->device, [&] {
    path->ops.reset();
    return OkStatus();
  }).IgnoreError();
  delete path;
}

bool ClientHasCuda() { return true; }

StatusOr<FrontendPathPtr> OpenFrontendPath(Session& session, const HandleView& view,
                                           std::chrono::milliseconds timeout) {
  if (!view.on_device()) {
    return FailedPreconditionError(
        "handle {}: the frontend-launched data path needs a receive region in device memory",
        view.handle_id());
  }
  // The group's other ranks create their handles concurrently: attaching needs all of them.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  StatusOr<v1::DataPlaneInfo> info = session.AttachDataPlane(view.handle_id());
  while (!info.ok() && info.status().code() == StatusCode::kFailedPrecondition &&
         info.status().message().find("has no handle yet") != std::string_view::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    info = session.AttachDataPlane(view.handle_id());
  }
  if (!info.ok()) return info.status().WithContext("attaching the data plane");
  FrontendPathPtr path(new FrontendPath);
  path->session = &session;
  path->handle_id = view.handle_id();
  // The device as this process numbers it (CUDA_VISIBLE_DEVICES may differ from the
  // daemon's), from the mapped region itself.
  cudaPointerAttributes attributes{};
  EPD_CUDA_CHECK(cudaPointerGetAttributes(&attributes, view.recv_x()));
  path->device = attributes.device;
  EPD_RETURN_IF_ERROR(OnDevice(path->device, [&]() -> Status {
    EPD_ASSIGN_OR_RETURN(path->ops, FrontendOps::Open(*info, view));
    return OkStatus();
  }));
  return path;
}

Status FrontendUpdate(FrontendPath& path, const void* topk_idx, bool idx_int64,
                      const float* weights, int num_tokens, void* stream) {
  return OnDevice(path.device, [&] {
    return path.ops->Update(topk_idx, idx_int64, weights, num_tokens, AsStream(stream));
  });
}

Status FrontendDispatch(FrontendPath& path, const void* x, void* stream) {
  return OnDevice(path.device, [&] { return path.ops->Dispatch(x, AsStream(stream)); });
}

Status FrontendCombine(FrontendPath& path, void* out, void* stream) {
  return OnDevice(path.device, [&] { return path.ops->Combine(out, AsStream(stream)); });
}

Status FrontendTakeErrors(FrontendPath& path) {
  Status recorded = path.ops->TakeErrors();
  if (path.ops->failed_epoch() != 0) {
    // A peer timed out: the ranks' op counts may differ, so every rank restarts numbering
    // (best effort: the recorded error is what the caller needs to see).
    path.session->AttachDataPlane(path.handle_id, path.ops->failed_epoch()).status().IgnoreError();
  }
  return recorded;
}

}  // namespace epd::c_api
