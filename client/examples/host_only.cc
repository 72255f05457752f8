// The device half of frontend_memory.h in builds without CUDA: only host pages exist.
#include "client/examples/frontend_launch.h"
#include "client/examples/frontend_memory.h"

namespace epd::example {
namespace {

Status NoCuda(std::string_view what) {
  return UnimplementedError("{} needs CUDA: this example was built with EPD_WITH_CUDA=OFF", what);
}

}  // namespace

StatusOr<std::unique_ptr<FrontendMemory>> CreateDeviceMemory(size_t, int) {
  return NoCuda("device memory for the cuda backend");
}
Status CopyToHost(void*, const void*, size_t) { return NoCuda("copying a device region"); }
Status CopyToDevice(void*, const void*, size_t) { return NoCuda("copying to a device region"); }

StatusOr<std::unique_ptr<FrontendLaunch>> CreateFrontendLaunch(Session&, const HandleView&,
                                                               FrontendMemory&, LaunchTensors,
                                                               std::chrono::milliseconds) {
  return NoCuda("the frontend-launched data path");
}

Status FrontendSignal(Fence& fence, uint64_t value) { return fence.Signal(value); }
Status FrontendWait(Fence& fence, uint64_t value, std::chrono::milliseconds timeout) {
  return fence.Wait(value, timeout);
}

}  // namespace epd::example
