#include "daemon/backends/cuda/nccl_await.h"

#include <cuda_runtime.h>

#include <thread>

#include "common/cuda_check.h"
#include "daemon/backends/cuda/nccl_check.h"

namespace epd::cuda {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr std::chrono::microseconds kPollInterval{200};
constexpr std::chrono::microseconds kEventSpin{500};
constexpr std::chrono::microseconds kEventPollInterval{20};
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

// Calls `done` until it says so (or fails), the caller stops, or the deadline passes.
Status Poll(SteadyClock::time_point deadline, const std::function<Status()>& stopped,
            std::string_view what, const std::function<StatusOr<bool>()>& done) {
  while (true) {
    EPD_ASSIGN_OR_RETURN(const bool finished, done());
    if (finished) return OkStatus();
    EPD_RETURN_IF_ERROR(stopped());
    if (SteadyClock::now() >= deadline) return UnavailableError("{}: timed out", what);
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace

Status AwaitComms(const std::vector<ncclComm_t>& comms, SteadyClock::time_point deadline,
                  const std::function<Status()>& stopped, std::string_view what) {
  return Poll(deadline, stopped, what, [&]() -> StatusOr<bool> {
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
    return !busy;
  });
}

ExchangeSizes UniformSizes(int world_size, int64_t bytes) {
  ExchangeSizes sizes;
  sizes.stride = bytes;
  sizes.send.assign(world_size, bytes);
  sizes.recv.assign(world_size, bytes);
  return sizes;
}

ncclResult_t EnqueueExchange(const std::vector<ExchangeSide>& sides, int world_size,
                             const ExchangeSizes& sizes) {
  ncclResult_t r = ncclGroupStart();
  for (const ExchangeSide& side : sides) {
    for (int p = 0; p < world_size && r == ncclSuccess; ++p) {
      if (p == side.rank) continue;
      const int64_t at = p * sizes.stride + sizes.offset;
      if (sizes.send[p] > 0) {
        r = ncclSend(side.send + at, static_cast<size_t>(sizes.send[p]), ncclUint8, p, side.comm,
                     side.stream);
      }
      if ((r == ncclSuccess || r == ncclInProgress) && sizes.recv[p] > 0) {
        r = ncclRecv(side.recv + at, static_cast<size_t>(sizes.recv[p]), ncclUint8, p, side.comm,
                     side.stream);
      }
      if (r == ncclInProgress) r = ncclSuccess;
    }
  }
  const ncclResult_t ended = ncclGroupEnd();  // always: a group left open would take later calls
  if (r == ncclSuccess && ended != ncclSuccess && ended != ncclInProgress) r = ended;
  return r;
}

Status AwaitEvent(cudaEvent_t event, SteadyClock::time_point deadline,
                  const std::function<Status()>& stopped, std::string_view what) {
  // A step that is nearly done is common (the device is just behind the host): a short spin
  // answers it within microseconds, the sleeps keep a long wait (a fence) off the core.
  const auto spin_until = SteadyClock::now() + kEventSpin;
  while (true) {
    const cudaError_t state = cudaEventQuery(event);
    if (state == cudaSuccess) return OkStatus();
    if (state != cudaErrorNotReady) EPD_CUDA_CHECK(state);
    cudaGetLastError();
    EPD_RETURN_IF_ERROR(stopped());
    const auto now = SteadyClock::now();
    if (now >= deadline) return UnavailableError("{}: timed out", what);
    if (now < spin_until) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kEventPollInterval);
    }
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
    std::vector<ExchangeSide> exchange;
    for (size_t i = 0; i < sides.size(); ++i) {
      char* send = sides[i].buffer;
      char* recv = send + static_cast<size_t>(world_size) * kWarmUpBytes;
      exchange.push_back({comms[i], ranks[i], send, recv, sides[i].stream});
    }
    if (const ncclResult_t r =
            EnqueueExchange(exchange, world_size, UniformSizes(world_size, kWarmUpBytes));
        r != ncclSuccess) {
      return UnavailableError("{}: {}", what, ncclGetErrorString(r));
    }
    EPD_RETURN_IF_ERROR(AwaitComms(comms, deadline, stopped, what));
    return Poll(deadline, stopped, what, [&]() -> StatusOr<bool> {
      for (const WarmUpSide& side : sides) {
        const cudaError_t state = cudaStreamQuery(side.stream);
        if (state == cudaErrorNotReady) return false;
        if (state != cudaSuccess) {
          return CudaStatus(state, "cudaStreamQuery(warm-up stream)", __FILE__, __LINE__);
        }
      }
      return true;
    });
  };
  Status status = run();
  Release(sides, status.ok());
  return status;
}

}  // namespace epd::cuda
