#include "kernels/abandon.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/preload.cuh"

namespace epd::kernels {
namespace {

__global__ void AbandonKernel(const SyncAreas sync, int world_size, int rank, uint64_t seq) {
  detail::PublishAbandoned(sync, world_size, rank, seq, /*blamed=*/-1);
}

}  // namespace

cudaError_t LaunchAbandon(const SyncAreas& sync, int world_size, int rank, uint64_t seq,
                          cudaStream_t stream) {
  AbandonKernel<<<1, 1, 0, stream>>>(sync, world_size, rank, seq);
  return cudaGetLastError();
}

namespace detail {

cudaError_t PreloadAbandonKernels() {
  return LoadKernel(reinterpret_cast<const void*>(&AbandonKernel));
}

}  // namespace detail
}  // namespace epd::kernels
