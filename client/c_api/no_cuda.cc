// Built instead of cuda_support.cc when the client has no CUDA (EPD_WITH_CUDA=OFF).
#include "client/c_api/internal.h"

namespace epd::c_api {
namespace {

Status NoCuda(const char* what) {
  return UnimplementedError("{} needs CUDA, but libepd_c was built without it (EPD_WITH_CUDA=OFF)",
                            what);
}

}  // namespace

StatusOr<v1::MemorySource> ExportDevice(const void*, uint64_t) {
  return NoCuda("registering device memory");
}
Status DeviceAllocation(const void*, uint64_t*, uint64_t*, int32_t*) {
  return NoCuda("looking up a device allocation");
}
Status SignalOnStream(const Fence&, uint64_t, void*) { return NoCuda("a fence stream op"); }
Status WaitOnStream(const Fence&, uint64_t, void*) { return NoCuda("a fence stream op"); }
Status ReleaseDeviceFence(const Fence&, uint64_t) { return NoCuda("a device fence"); }
Status EnqueueStreamOp(epd_stream_op*, void*) { return NoCuda("a stream op"); }

struct FrontendPath {};
void DestroyFrontendPath(FrontendPath* path) { delete path; }
bool ClientHasCuda() { return false; }
StatusOr<FrontendPathPtr> OpenFrontendPath(Session&, const HandleView&,
                                           std::chrono::milliseconds) {
  return NoCuda("the frontend-launched data path");
}
Status FrontendUpdate(FrontendPath&, const void*, bool, const float*, int, void*) {
  return NoCuda("the frontend-launched data path");
}
Status FrontendDispatch(FrontendPath&, const void*, void*) {
  return NoCuda("the frontend-launched data path");
}
Status FrontendCombine(FrontendPath&, void*, void*) {
  return NoCuda("the frontend-launched data path");
}
Status FrontendTakeErrors(FrontendPath&) { return NoCuda("the frontend-launched data path"); }

}  // namespace epd::c_api
