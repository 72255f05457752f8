#include "tests/bench/handoff.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <thread>

#include "tests/bench/gpu_util.h"
#include "tests/bench/process_util.h"

namespace epd::bench::handoff {
namespace {

// Byte offsets inside the flag allocation: each word on a line of its own.
constexpr size_t kFlagA = 0, kFlagB = 128, kScratchP = 256, kScratchQ = 384, kTimeouts = 512,
                 kFlagBytes = 640;
// A spin wait gives up after this long (and counts it in kTimeouts, which fails the run).
constexpr unsigned long long kSpinTimeoutNs = 5'000'000'000ull;
// Every wait below is bounded, and together they stay under the watchdog's default limit
// (handoff_main.cc), so a stuck step reports itself with the step's name. A healthy run
// takes well under a second per measurement, even time-sliced without MPS.
constexpr auto kSpanTimeout = std::chrono::milliseconds(20'000);
constexpr auto kReadyTimeout = std::chrono::milliseconds(20'000);
constexpr auto kChildExitTimeout = std::chrono::milliseconds(10'000);
constexpr auto kPreloadTimeout = std::chrono::milliseconds(10'000);

__global__ void TouchKernel(unsigned long long* word) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *word += 1;
}

// The spinning alternative to cuStreamWaitValue64: one thread polls the flag (acquire, system
// scope) until it reaches `value`; bounded, a timeout is counted instead of hanging.
__global__ void SpinWaitKernel(const unsigned long long* flag, unsigned long long value,
                               unsigned long long* timeouts) {
  unsigned long long start, now, seen;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  while (true) {
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(seen) : "l"(flag) : "memory");
    if (seen >= value) return;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > kSpinTimeoutNs) {
      atomicAdd(timeouts, 1ull);
      return;
    }
  }
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

// One side's wait for `flag` >= value, the way `kind` says.
Status EnqueueWait(const MemOps& ops, WaitKind kind, void* flags, size_t flag, uint64_t value,
                   cudaStream_t stream, const char* what) {
  if (kind == WaitKind::kMemOp) {
    return CheckCu(ops.wait(reinterpret_cast<CUstream>(stream), At(flags, flag), value,
                            CU_STREAM_WAIT_VALUE_GEQ),
                   what);
  }
  SpinWaitKernel<<<1, 1, 0, stream>>>(reinterpret_cast<const unsigned long long*>(At(flags, flag)),
                                      value, reinterpret_cast<unsigned long long*>(At(flags, kTimeouts)));
  return gpu::Check(cudaGetLastError(), what);
}

// A spin wait that gave up leaves a span that measured nothing: an error, not a figure.
Status CheckNoSpinTimeouts(void* flags) {
  unsigned long long timeouts = 0;
  EPD_BENCH_CUDA(cudaMemcpy(&timeouts, static_cast<char*>(flags) + kTimeouts, sizeof(timeouts),
                            cudaMemcpyDeviceToHost));
  if (timeouts != 0) {
    return DeadlineExceededError("{} spin waits gave up after {} s", timeouts,
                                 kSpinTimeoutNs / 1'000'000'000ull);
  }
  return OkStatus();
}

// Polls `stream` (nullptr: the legacy default stream) until its work is done, at most
// `timeout`; unlike cudaStreamSynchronize it cannot wait forever on a flag never written.
Status AwaitStream(cudaStream_t stream, std::chrono::milliseconds timeout, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const cudaError_t state = cudaStreamQuery(stream);
    if (state == cudaSuccess) return OkStatus();
    if (state != cudaErrorNotReady) return gpu::Check(state, what);
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceededError("{}: not done within {} ms", what, timeout.count());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// NOTE: must run before anything is enqueued behind a gate or a flag wait. With lazy module
// loading (the default since CUDA 12.2) the first launch of TouchKernel loads it, and a load
// may synchronize the context: issued behind a closed gate, that launch never returns, since
// the gate opens only after the launch. One launch run to completion here loads it.
Status PreloadTouchKernel(void* flags, size_t scratch_offset, cudaStream_t stream) {
  TouchKernel<<<1, 32, 0, stream>>>(reinterpret_cast<unsigned long long*>(At(flags, scratch_offset)));
  EPD_BENCH_CUDA(cudaGetLastError());
  // A wait for 0 returns at once: it only loads the kernel.
  SpinWaitKernel<<<1, 1, 0, stream>>>(reinterpret_cast<const unsigned long long*>(At(flags, kFlagA)),
                                      0, reinterpret_cast<unsigned long long*>(At(flags, kTimeouts)));
  EPD_BENCH_CUDA(cudaGetLastError());
  return AwaitStream(stream, kPreloadTimeout, "the TouchKernel preload launch");
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
    EPD_RETURN_IF_ERROR(EnqueueWait(ops, options.p_wait, flags, kFlagB, i, stream, "P's wait on B"));
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
    EPD_RETURN_IF_ERROR(EnqueueWait(ops, options.q_wait, flags, kFlagA, i, stream, "Q's wait on A"));
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
  int ready = -1;
  do {
    ready = poll(&p, 1, static_cast<int>(timeout.count()));
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) return DeadlineExceededError("side Q did not start within {} ms", timeout.count());
  char byte = 0;
  if (ready < 0 || read(fd, &byte, 1) != 1 || byte != 'r') {
    return UnavailableError("side Q failed before it enqueued its steps (see its output)");
  }
  return OkStatus();
}

// The flags, zeroed. NOTE: cudaMemset runs on the legacy default stream, which does not
// order the non-blocking streams below: a zero landing after side P's first write would
// lose it, and side Q would wait for it forever.
StatusOr<std::unique_ptr<gpu::DeviceBuffer>> CreateFlags(int device) {
  EPD_ASSIGN_OR_RETURN(auto flags, gpu::DeviceBuffer::Create(device, kFlagBytes));
  EPD_RETURN_IF_ERROR(AwaitStream(nullptr, kPreloadTimeout, "zeroing the flags"));
  return StatusOr<std::unique_ptr<gpu::DeviceBuffer>>(std::move(flags));
}

// After a span that did not end, a stream still waits on the flags (and the gate): freeing
// either synchronizes the context, which would never return. The process exits right after
// the error is printed, and the driver reclaims them then.
void AbandonAfterStuckSpan(std::unique_ptr<gpu::DeviceBuffer>& flags,
                           std::unique_ptr<gpu::Gate>& gate) {
  (void)flags.release();
  (void)gate.release();
}

}  // namespace

const char* WaitKindName(WaitKind kind) { return kind == WaitKind::kMemOp ? "memop" : "spin"; }

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

StatusOr<double> TwoStreams(const Options& options, const Progress& progress) {
  EPD_RETURN_IF_ERROR(CheckOptions(options));
  EPD_ASSIGN_OR_RETURN(MemOps ops, ResolveMemOps());
  EPD_BENCH_CUDA(cudaSetDevice(options.device));
  EPD_ASSIGN_OR_RETURN(auto flags, CreateFlags(options.device));
  EPD_ASSIGN_OR_RETURN(auto p, Stream::Create());
  EPD_ASSIGN_OR_RETURN(auto q, Stream::Create());
  progress("two streams: loading the kernel");
  EPD_RETURN_IF_ERROR(PreloadTouchKernel(flags->data(), kScratchP, p->get()));
  EPD_ASSIGN_OR_RETURN(auto gate, gpu::Gate::Create(gpu::Gate::Kind::kStreamWait));
  EPD_ASSIGN_OR_RETURN(auto events, gpu::EventPair::Create(options.device));
  progress(fmt::format("two streams: enqueueing {} round trips behind the gate",
                       options.warmup + options.iterations));
  Status enqueued = EnqueueSideP(ops, options, flags->data(), p->get(), *gate, *events);
  if (enqueued.ok()) enqueued = EnqueueSideQ(ops, options, flags->data(), q->get());
  gate->Open(1);  // always: an armed stream must not outlive the gate's memory
  if (!enqueued.ok()) {
    // Side Q may be missing steps that side P waits for.
    AbandonAfterStuckSpan(flags, gate);
    return enqueued;
  }
  progress("two streams: gate open, waiting for the timed span");
  StatusOr<double> us = events->ElapsedUs(kSpanTimeout);
  Status q_done = us.ok() ? AwaitStream(q->get(), kSpanTimeout, "side Q's stream") : us.status();
  if (!q_done.ok()) {
    AbandonAfterStuckSpan(flags, gate);
    const char* connections = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    if (connections != nullptr && std::atoi(connections) == 1) {
      // One hardware queue: side P's flag wait blocks side Q's steps queued behind it.
      return q_done.WithContext(
          "two streams (CUDA_DEVICE_MAX_CONNECTIONS=1 puts both streams on one hardware queue, "
          "where they deadlock; unset it)");
    }
    return q_done.WithContext("two streams");
  }
  EPD_RETURN_IF_ERROR(CheckNoSpinTimeouts(flags->data()));
  return *us / options.iterations;
}

StatusOr<double> TwoProcesses(const Options& options, const std::string& self_path,
                              const Progress& progress) {
  EPD_RETURN_IF_ERROR(CheckOptions(options));
  if (self_path.empty()) return InternalError("cannot resolve /proc/self/exe to start side Q");
  EPD_ASSIGN_OR_RETURN(MemOps ops, ResolveMemOps());
  EPD_BENCH_CUDA(cudaSetDevice(options.device));
  EPD_ASSIGN_OR_RETURN(auto flags, CreateFlags(options.device));
  EPD_ASSIGN_OR_RETURN(auto p, Stream::Create());
  progress("two processes: loading the kernel");
  EPD_RETURN_IF_ERROR(PreloadTouchKernel(flags->data(), kScratchP, p->get()));
  cudaIpcMemHandle_t handle;
  EPD_BENCH_CUDA(cudaIpcGetMemHandle(&handle, flags->data()));
  // Close-on-exec but for the write end the child gets: the child must not hold the read end,
  // nor the parent the write end, or a dead side Q would not show as end-of-file.
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return InternalError("pipe2: errno {}", errno);
  if (fcntl(pipe_fds[1], F_SETFD, 0) != 0) {
    const int error = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return InternalError("fcntl(F_SETFD) on the ready pipe: errno {}", error);
  }
  progress("two processes: starting side Q");
  // NOTE: the child is a fresh exec of this binary: a forked CUDA context is unusable.
  auto child = Spawn({self_path, "--role", "q", "--device", std::to_string(options.device),
                      "--warmup", std::to_string(options.warmup), "--iterations",
                      std::to_string(options.iterations), "--q-wait", WaitKindName(options.q_wait),
                      "--ipc-handle", ToHex(handle),
                      "--ready-fd", std::to_string(pipe_fds[1])},
                     "");
  close(pipe_fds[1]);
  if (!child.ok()) {
    close(pipe_fds[0]);
    return child.status();
  }
  progress("two processes: waiting for side Q to enqueue its steps");
  Status ready = AwaitReady(pipe_fds[0], kReadyTimeout);
  close(pipe_fds[0]);
  if (!ready.ok()) {
    Terminate(*child);
    return ready.WithContext("two processes");
  }
  EPD_ASSIGN_OR_RETURN(auto gate, gpu::Gate::Create(gpu::Gate::Kind::kStreamWait));
  EPD_ASSIGN_OR_RETURN(auto events, gpu::EventPair::Create(options.device));
  progress(fmt::format("two processes: enqueueing {} round trips behind the gate",
                       options.warmup + options.iterations));
  Status enqueued = EnqueueSideP(ops, options, flags->data(), p->get(), *gate, *events);
  gate->Open(1);
  if (enqueued.ok()) progress("two processes: gate open, waiting for the timed span");
  StatusOr<double> us = enqueued.ok() ? events->ElapsedUs(kSpanTimeout) : StatusOr<double>(enqueued);
  // Side Q finishes its last step before side P's, so it exits soon after a good span.
  const int child_exit = WaitFor(*child, us.ok() ? kChildExitTimeout : std::chrono::milliseconds(0));
  if (child_exit < 0) Terminate(*child);
  if (!us.ok()) {
    AbandonAfterStuckSpan(flags, gate);
    return us.status().WithContext("two processes");
  }
  if (child_exit != 0) {
    return InternalError("two processes: side Q exited with {} (see its lines above)", child_exit);
  }
  EPD_RETURN_IF_ERROR(CheckNoSpinTimeouts(flags->data()));
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
  // Before the first flag wait: see PreloadTouchKernel.
  EPD_RETURN_IF_ERROR(PreloadTouchKernel(flags, kScratchQ, q->get()));
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
