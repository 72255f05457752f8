#include "daemon/backends/cuda/nccl_await.h"

#include <cuda_runtime.h>

#include <thread>

#include "common/cuda_check.h"
#include "daemon/backends/cuda/nccl_check.h"

namespace epd::cuda {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr std::chrono::microseconds kPollInterval{200};
constexpr size_t kWarmUpBytes = 16;  // per peer and direction

// One rank's side of the warm-up: a stream and a buffer [send R | recv R] x kWarmUpBytes,
// allocated and freed in stream order where the GPU has memory pools (cudaFree would wait for
// every kernel of the context).
struct WarmUpSide {
  int device = 0;
  cudaStream_t stream = nullptr;
  char* buffer = nullptr;
  bool pooled = true;  // cudaMallocAsync; else cudaMalloc
};

// `done`: the streams finished. NOTE: an unpooled buffer of a warm-up that did not finish is
// left allocated (a few bytes): freeing it would wait for NCCL kernels that end only once the
// caller aborts the communicators.
void Release(std::vector<WarmUpSide>& sides, bool done) {
  for (WarmUpSide& side : sides) {
    if (side.stream == nullptr) continue;
    cudaSetDevice(side.device);
    if (side.buffer != nullptr && side.pooled) cudaFreeAsync(side.buffer, side.stream);
    if (side.buffer != nullptr && !side.pooled && done) cudaFree(side.buffer);
    cudaStreamDestroy(side.stream);  // returns at once; released once its work is done
  }
}

Status Prepare(WarmUpSide& side, int world_size) {
  const size_t bytes = 2 * static_cast<size_t>(world_size) * kWarmUpBytes;
  EPD_CUDA_CHECK(cudaSetDevice(side.device));
  EPD_CUDA_CHECK(cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking));
  void** buffer = reinterpret_cast<void**>(&side.buffer);
  if (const cudaError_t e = cudaMallocAsync(buffer, bytes, side.stream); e != cudaSuccess) {
    if (e != cudaErrorNotSupported) EPD_CUDA_CHECK(e);
    cudaGetLastError();  // a GPU without memory pools (some virtual GPUs)
    side.pooled = false;
    EPD_CUDA_CHECK(cudaMalloc(buffer, bytes));
  }
  EPD_CUDA_CHECK(cudaMemsetAsync(side.buffer, 0, bytes, side.stream));
  return OkStatus();
}

Status AwaitStreams(const std::vector<WarmUpSide>& sides, SteadyClock::time_point deadline,
                    const std::function<Status()>& stopped, std::string_view what) {
  for (const WarmUpSide& side : sides) {
    while (true) {
      const cudaError_t state = cudaStreamQuery(side.stream);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) {
        return CudaStatus(state, "cudaStreamQuery(warm-up stream)", __FILE__, __LINE__);
      }
      EPD_RETURN_IF_ERROR(stopped());
      if (SteadyClock::now() >= deadline) return UnavailableError("{}: timed out", what);
      std::this_thread::sleep_for(kPollInterval);
    }
  }
  return OkStatus();
}

}  // namespace

Status AwaitComms(const std::vector<ncclComm_t>& comms, SteadyClock::time_point deadline,
                  const std::function<Status()>& stopped, std::string_view what) {
  while (true) {
    bool busy = false;
    for (ncclComm_t comm : comms) {
      ncclResult_t state = ncclSuccess;
      EPD_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
      if (state == ncclInProgress) {
        busy = true;
      } else if (state != ncclSuccess) {
        return UnavailableError("{}: NCCL reported {} ({})", what, static_cast<int>(state),
                                ncclGetErrorString(state));
      }
    }
    if (!busy) return OkStatus();
    EPD_RETURN_IF_ERROR(stopped());
    if (SteadyClock::now() >= deadline) return UnavailableError("{}: timed out", what);
    std::this_thread::sleep_for(kPollInterval);
  }
}

Status WarmUpExchange(const std::vector<ncclComm_t>& comms, const std::vector<int>& ranks,
                      const std::vector<int>& devices, int world_size,
                      SteadyClock::time_point deadline, const std::function<Status()>& stopped,
                      std::string_view what) {
  std::vector<WarmUpSide> sides(comms.size());
  auto run = [&]() -> Status {
    for (size_t i = 0; i < sides.size(); ++i) {
      sides[i].device = devices[i];
      EPD_RETURN_IF_ERROR(Prepare(sides[i], world_size));
    }
    // One group for all of this process's ranks: their sends and receives match each other.
    EPD_NCCL_CHECK(ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    for (size_t i = 0; i < sides.size() && r == ncclSuccess; ++i) {
      char* send = sides[i].buffer;
      char* recv = send + static_cast<size_t>(world_size) * kWarmUpBytes;
      for (int p = 0; p < world_size && r == ncclSuccess; ++p) {
        if (p == ranks[i]) continue;
        r = ncclSend(send + p * kWarmUpBytes, kWarmUpBytes, ncclUint8, p, comms[i],
                     sides[i].stream);
        if (r == ncclSuccess || r == ncclInProgress) {
          r = ncclRecv(recv + p * kWarmUpBytes, kWarmUpBytes, ncclUint8, p, comms[i],
                       sides[i].stream);
        }
        if (r == ncclInProgress) r = ncclSuccess;
      }
    }
    const ncclResult_t ended = ncclGroupEnd();
    if (r == ncclSuccess && ended != ncclSuccess && ended != ncclInProgress) r = ended;
    if (r != ncclSuccess) return UnavailableError("{}: {}", what, ncclGetErrorString(r));
    EPD_RETURN_IF_ERROR(AwaitComms(comms, deadline, stopped, what));
    return AwaitStreams(sides, deadline, stopped, what);
  };
  Status status = run();
  Release(sides, status.ok());
  return status;
}

}  // namespace epd::cuda
