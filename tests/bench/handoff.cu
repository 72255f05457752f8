#include "tests/bench/handoff.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>

#include "tests/bench/gpu_util.h"
#include "tests/bench/process_util.h"

namespace epd::bench::handoff {
namespace {

// Byte offsets inside the flag allocation: each word on a line of its own.
constexpr size_t kFlagA = 0, kFlagB = 128, kScratchP = 256, kScratchQ = 384, kFlagBytes = 512;
constexpr auto kSpanTimeout = std::chrono::milliseconds(60'000);

__global__ void TouchKernel(unsigned long long* word) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *word += 1;
}

struct MemOps {
  PFN_cuStreamWriteValue64_v11070 write = nullptr;
  PFN_cuStreamWaitValue64_v11070 wait = nullptr;
};

StatusOr<MemOps> ResolveMemOps() {
  MemOps ops;
  for (auto [symbol, slot] : {std::pair<const char*, void**>{"cuStreamWriteValue64",
                                                             reinterpret_cast<void**>(&ops.write)},
                              {"cuStreamWaitValue64", reinterpret_cast<void**>(&ops.wait)}}) {
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    EPD_BENCH_CUDA(cudaGetDriverEntryPointByVersion(symbol, slot, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || *slot == nullptr) {
      return UnavailableError("the driver has no {}", symbol);
    }
  }
  return ops;
}

Status CheckCu(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return OkStatus();
  return InternalError("{} failed: CUresult {}", what, static_cast<int>(result));
}

CUdeviceptr At(void* base, size_t offset) {
  return reinterpret_cast<CUdeviceptr>(static_cast<char*>(base) + offset);
}

Status CheckOptions(const Options& options) {
  if (options.iterations < 1 || options.warmup < 0 ||
      options.warmup + options.iterations > kMaxRoundTrips) {
    return InvalidArgumentError(
        "warmup = {} and iterations = {}: need iterations >= 1 and warmup + iterations <= {} "
        "(every step is enqueued before the gate opens)",
        options.warmup, options.iterations, kMaxRoundTrips);
  }
  return OkStatus();
}

// Side P's steps, behind `gate`: for i: A = i; wait B >= i; kernel. Events around the timed
// round trips (after the warm-up ones).
Status EnqueueSideP(const MemOps& ops, const Options& options, void* flags, cudaStream_t stream,
                    gpu::Gate& gate, gpu::EventPair& events) {
  EPD_RETURN_IF_ERROR(gate.Arm(stream, 1));
  const auto cu_stream = reinterpret_cast<CUstream>(stream);
  auto* scratch = reinterpret_cast<unsigned long long*>(At(flags, kScratchP));
  const int total = options.warmup + options.iterations;
  for (int i = 1; i <= total; ++i) {
    if (i == options.warmup + 1) EPD_RETURN_IF_ERROR(events.RecordStart(stream));
    EPD_RETURN_IF_ERROR(CheckCu(ops.write(cu_stream, At(flags, kFlagA), i, CU_STREAM_WRITE_VALUE_DEFAULT),
                                "cuStreamWriteValue64(A)"));
    EPD_RETURN_IF_ERROR(CheckCu(ops.wait(cu_stream, At(flags, kFlagB), i, CU_STREAM_WAIT_VALUE_GEQ),
                                "cuStreamWaitValue64(B)"));
    TouchKernel<<<1, 32, 0, stream>>>(scratch);
    EPD_BENCH_CUDA(cudaGetLastError());
  }
  return events.RecordStop(stream);
}

// Side Q's steps: for i: wait A >= i; kernel; B = i.
Status EnqueueSideQ(const MemOps& ops, const Options& options, void* flags, cudaStream_t stream) {
  const auto cu_stream = reinterpret_cast<CUstream>(stream);
  auto* scratch = reinterpret_cast<unsigned long long*>(At(flags, kScratchQ));
  for (int i = 1; i <= options.warmup + options.iterations; ++i) {
    EPD_RETURN_IF_ERROR(CheckCu(ops.wait(cu_stream, At(flags, kFlagA), i, CU_STREAM_WAIT_VALUE_GEQ),
                                "cuStreamWaitValue64(A)"));
    TouchKernel<<<1, 32, 0, stream>>>(scratch);
    EPD_BENCH_CUDA(cudaGetLastError());
    EPD_RETURN_IF_ERROR(CheckCu(ops.write(cu_stream, At(flags, kFlagB), i, CU_STREAM_WRITE_VALUE_DEFAULT),
                                "cuStreamWriteValue64(B)"));
  }
  return OkStatus();
}

// A non-blocking stream owned for the scope of one measurement.
class Stream {
 public:
  static StatusOr<std::unique_ptr<Stream>> Create() {
    std::unique_ptr<Stream> s(new Stream());
    EPD_BENCH_CUDA(cudaStreamCreateWithFlags(&s->stream_, cudaStreamNonBlocking));
    return StatusOr<std::unique_ptr<Stream>>(std::move(s));
  }
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t get() const { return stream_; }

 private:
  Stream() = default;
  cudaStream_t stream_ = nullptr;
};

std::string ToHex(const cudaIpcMemHandle_t& handle) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : std::string(handle.reserved, sizeof(handle.reserved))) {
    hex += kDigits[c >> 4];
    hex += kDigits[c & 15];
  }
  return hex;
}

StatusOr<cudaIpcMemHandle_t> FromHex(const std::string& hex) {
  cudaIpcMemHandle_t handle;
  if (hex.size() != 2 * sizeof(handle.reserved)) {
    return InvalidArgumentError("--ipc-handle has {} hex digits, expected {}", hex.size(),
                                2 * sizeof(handle.reserved));
  }
  for (size_t i = 0; i < sizeof(handle.reserved); ++i) {
    const std::string byte = hex.substr(2 * i, 2);
    char* end = nullptr;
    const long value = std::strtol(byte.c_str(), &end, 16);
    if (end != byte.c_str() + 2) return InvalidArgumentError("--ipc-handle: '{}' is not hex", byte);
    handle.reserved[i] = static_cast<char>(value);
  }
  return handle;
}

// Waits up to `timeout` for one byte on `fd` (the child's "enqueued" word).
Status AwaitReady(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  const int ready = poll(&p, 1, static_cast<int>(timeout.count()));
  if (ready == 0) return DeadlineExceededError("side Q did not start within {} ms", timeout.count());
  char byte = 0;
  if (ready < 0 || read(fd, &byte, 1) != 1 || byte != 'r') {
    return UnavailableError("side Q failed before it enqueued its steps (see its output)");
  }
  return OkStatus();
}

}  // namespace

StatusOr<GpuMode> Describe(int device) {
  GpuMode mode;
  mode.name = gpu::DeviceName(device);
  int mps = 0;
  EPD_BENCH_CUDA(cudaSetDevice(device));
  EPD_BENCH_CUDA(cudaDeviceGetAttribute(&mps, cudaDevAttrMpsEnabled, device));
  EPD_BENCH_CUDA(cudaDeviceGetAttribute(&mode.compute_mode, cudaDevAttrComputeMode, device));
  mode.mps_active = mps != 0;
  return mode;
}

StatusOr<double> TwoStreams(const Options& options) {
  EPD_RETURN_IF_ERROR(CheckOptions(options));
  EPD_ASSIGN_OR_RETURN(MemOps ops, ResolveMemOps());
  EPD_BENCH_CUDA(cudaSetDevice(options.device));
  EPD_ASSIGN_OR_RETURN(auto flags, gpu::DeviceBuffer::Create(options.device, kFlagBytes));
  EPD_ASSIGN_OR_RETURN(auto p, Stream::Create());
  EPD_ASSIGN_OR_RETURN(auto q, Stream::Create());
  EPD_ASSIGN_OR_RETURN(auto gate, gpu::Gate::Create(gpu::Gate::Kind::kStreamWait));
  EPD_ASSIGN_OR_RETURN(auto events, gpu::EventPair::Create(options.device));
  Status enqueued = EnqueueSideP(ops, options, flags->data(), p->get(), *gate, *events);
  if (enqueued.ok()) enqueued = EnqueueSideQ(ops, options, flags->data(), q->get());
  gate->Open(1);  // always: an armed stream must not outlive the gate's memory
  EPD_RETURN_IF_ERROR(enqueued);
  EPD_ASSIGN_OR_RETURN(double us, events->ElapsedUs(kSpanTimeout));
  EPD_BENCH_CUDA(cudaStreamSynchronize(q->get()));
  return us / options.iterations;
}

StatusOr<double> TwoProcesses(const Options& options, const std::string& self_path) {
  EPD_RETURN_IF_ERROR(CheckOptions(options));
  EPD_ASSIGN_OR_RETURN(MemOps ops, ResolveMemOps());
  EPD_BENCH_CUDA(cudaSetDevice(options.device));
  EPD_ASSIGN_OR_RETURN(auto flags, gpu::DeviceBuffer::Create(options.device, kFlagBytes));
  cudaIpcMemHandle_t handle;
  EPD_BENCH_CUDA(cudaIpcGetMemHandle(&handle, flags->data()));
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return InternalError("pipe: errno {}", errno);
  // NOTE: the child is a fresh exec of this binary: a forked CUDA context is unusable.
  auto child = Spawn({self_path, "--role", "q", "--device", std::to_string(options.device),
                      "--warmup", std::to_string(options.warmup), "--iterations",
                      std::to_string(options.iterations), "--ipc-handle", ToHex(handle),
                      "--ready-fd", std::to_string(pipe_fds[1])},
                     "");
  close(pipe_fds[1]);
  if (!child.ok()) {
    close(pipe_fds[0]);
    return child.status();
  }
  Status ready = AwaitReady(pipe_fds[0], std::chrono::milliseconds(30'000));
  close(pipe_fds[0]);
  if (!ready.ok()) {
    Terminate(*child);
    return ready;
  }
  EPD_ASSIGN_OR_RETURN(auto p, Stream::Create());
  EPD_ASSIGN_OR_RETURN(auto gate, gpu::Gate::Create(gpu::Gate::Kind::kStreamWait));
  EPD_ASSIGN_OR_RETURN(auto events, gpu::EventPair::Create(options.device));
  Status enqueued = EnqueueSideP(ops, options, flags->data(), p->get(), *gate, *events);
  gate->Open(1);
  StatusOr<double> us = enqueued.ok() ? events->ElapsedUs(kSpanTimeout) : StatusOr<double>(enqueued);
  const int child_exit = WaitFor(*child, kSpanTimeout);
  if (child_exit != 0) {
    if (child_exit < 0) Terminate(*child);
    if (us.ok()) return InternalError("side Q exited with {}", child_exit);
  }
  EPD_RETURN_IF_ERROR(us.status());
  return *us / options.iterations;
}

Status RunChildSide(const Options& options, const std::string& ipc_handle_hex, int ready_fd) {
  EPD_RETURN_IF_ERROR(CheckOptions(options));
  EPD_ASSIGN_OR_RETURN(cudaIpcMemHandle_t handle, FromHex(ipc_handle_hex));
  EPD_ASSIGN_OR_RETURN(MemOps ops, ResolveMemOps());
  EPD_BENCH_CUDA(cudaSetDevice(options.device));
  void* flags = nullptr;
  EPD_BENCH_CUDA(cudaIpcOpenMemHandle(&flags, handle, cudaIpcMemLazyEnablePeerAccess));
  EPD_ASSIGN_OR_RETURN(auto q, Stream::Create());
  Status status = EnqueueSideQ(ops, options, flags, q->get());
  if (status.ok() && write(ready_fd, "r", 1) != 1) {
    status = InternalError("writing the ready byte: errno {}", errno);
  }
  close(ready_fd);
  // Bounded: if the parent died, its flags never come and this side gives up.
  const auto deadline = std::chrono::steady_clock::now() + kSpanTimeout;
  while (status.ok()) {
    const cudaError_t state = cudaStreamQuery(q->get());
    if (state == cudaSuccess) break;
    if (state != cudaErrorNotReady) {
      status = gpu::Check(state, "cudaStreamQuery");
    } else if (std::chrono::steady_clock::now() > deadline) {
      status = DeadlineExceededError("side P did not finish within {} ms", kSpanTimeout.count());
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  if (status.ok()) status = gpu::Check(cudaIpcCloseMemHandle(flags), "cudaIpcCloseMemHandle");
  return status;
}

}  // namespace epd::bench::handoff
