// epd-release-stall-bench: which CUDA calls that give memory back wait for a running kernel,
// and whether another thread's launch waits with them (docs/design.md §7, "Giving memory
// back": why the cuda backend's Reclaimer never calls cudaFree, cudaFreeHost or
// cudaIpcCloseMemHandle while serving).
//
// For each release call: a kernel spins for --spin-ms on one stream; 20 ms in, one thread
// makes the call while, 20 ms later, another thread launches a tiny kernel on a second stream.
// Reported: how long the call and the launch took. Twice: with the kernel in this process, then
// in another process (a frontend's kernel: its own context, or the same MPS server). Exit 77
// without a GPU.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

__global__ void SpinFor(long long ns) {
  long long start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > ns) break;
  }
}

__global__ void Touch(int* word) { *word += 1; }

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "release-stall: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

// A child process exporting one allocation (a handle cannot be opened by its own process) and
// spinning a kernel on request: one byte 's' starts one, answered with one byte once launched.
struct Exporter {
  pid_t pid = -1;
  int to_child = -1, from_child = -1;
  cudaIpcMemHandle_t handle{};
  bool Start(long long spin_ms) {
    int up[2], down[2];
    if (pipe(up) != 0 || pipe(down) != 0) return false;
    pid = fork();  // before this process touches CUDA
    if (pid == 0) {
      close(up[0]);
      close(down[1]);  // else its read below never sees the parent let go
      void* data = nullptr;
      cudaIpcMemHandle_t h{};
      const bool ok =
          cudaMalloc(&data, 2 << 20) == cudaSuccess && cudaIpcGetMemHandle(&h, data) == cudaSuccess;
      if (!ok || write(up[1], &h, sizeof(h)) != sizeof(h)) _exit(1);
      SpinFor<<<1, 32>>>(1000);  // loaded before it is timed
      cudaDeviceSynchronize();
      char c;
      while (read(down[0], &c, 1) > 0) {
        SpinFor<<<1, 32>>>(spin_ms * 1'000'000);
        if (write(up[1], &c, 1) != 1) break;
      }
      cudaDeviceSynchronize();
      _exit(0);
    }
    close(up[1]);
    close(down[0]);
    to_child = down[1];
    from_child = up[0];
    return read(from_child, &handle, sizeof(handle)) == sizeof(handle);
  }
  // Starts the child's kernel; true once it was launched.
  bool Spin() {
    char c = 's';
    return write(to_child, &c, 1) == 1 && read(from_child, &c, 1) == 1;
  }
  ~Exporter() {
    if (to_child >= 0) close(to_child);
    if (pid > 0) waitpid(pid, nullptr, 0);
    if (from_child >= 0) close(from_child);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each row as it is measured
  const long long spin_ms =
      argc > 2 && std::string(argv[1]) == "--spin-ms" ? std::atoll(argv[2]) : 400;
  Exporter exporter;
  const bool have_export = exporter.Start(spin_ms);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "release-stall: no CUDA GPU\n");
    return 77;
  }
  cudaStream_t spinning, other;
  int* word = nullptr;
  if (!Check(cudaStreamCreateWithFlags(&spinning, cudaStreamNonBlocking), "stream") ||
      !Check(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), "stream") ||
      !Check(cudaMalloc(&word, sizeof(int)), "cudaMalloc")) {
    return 1;
  }
  // Load both kernels now: a first launch would itself wait for running kernels.
  SpinFor<<<1, 32, 0, spinning>>>(1000);
  Touch<<<1, 1, 0, other>>>(word);
  if (!Check(cudaDeviceSynchronize(), "warm-up")) return 1;

  struct Case {
    std::string name;
    std::function<void()> prepare;  // before the kernel starts
    std::function<cudaError_t()> release;
  };
  void* device_block = nullptr;
  void* host_block = nullptr;
  void* mapping = nullptr;
  std::vector<Case> cases = {
      {"nothing (baseline)", [] {}, [] { return cudaSuccess; }},
      {"cudaFree", [&] { cudaMalloc(&device_block, 64 << 20); },
       [&] { return cudaFree(device_block); }},
      {"cudaFreeAsync (cudaMalloc'd, other stream)", [&] { cudaMalloc(&device_block, 64 << 20); },
       [&] { return cudaFreeAsync(device_block, other); }},
      {"cudaFreeHost", [&] { cudaHostAlloc(&host_block, 1 << 20, cudaHostAllocMapped); },
       [&] { return cudaFreeHost(host_block); }},
  };
  if (have_export) {
    cases.push_back(
        {"cudaIpcCloseMemHandle",
         [&] { cudaIpcOpenMemHandle(&mapping, exporter.handle, cudaIpcMemLazyEnablePeerAccess); },
         [&] { return cudaIpcCloseMemHandle(mapping); }});
  }

  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf(
      "GPU: %s; a kernel spins %lld ms; the release 20 ms in, another thread's launch "
      "20 ms later\n",
      prop.name, spin_ms);
  for (const bool elsewhere : {false, true}) {
    if (elsewhere && !have_export) break;
    std::printf("\nthe spinning kernel in %s\n\n",
                elsewhere ? "another process (the exporter child)" : "this process");
    std::printf("| release call | call took (ms) | other thread's launch took (ms) |\n");
    std::printf("|---|---|---|\n");
    for (Case& c : cases) {
      c.prepare();
      if (!Check(cudaDeviceSynchronize(), c.name.c_str())) return 1;
      if (elsewhere) {
        if (!exporter.Spin()) return 1;
      } else {
        SpinFor<<<1, 32, 0, spinning>>>(spin_ms * 1'000'000);
      }
      double call_ms = 0, launch_ms = 0;
      cudaError_t result = cudaSuccess;
      std::thread releaser([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        const auto start = Clock::now();
        result = c.release();
        call_ms = MsBetween(start, Clock::now());
      });
      std::thread launcher([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(40));
        const auto start = Clock::now();
        Touch<<<1, 1, 0, other>>>(word);
        launch_ms = MsBetween(start, Clock::now());
      });
      releaser.join();
      launcher.join();
      if (!Check(result, c.name.c_str()) || !Check(cudaDeviceSynchronize(), c.name.c_str())) {
        return 1;
      }
      std::printf("| %s | %.2f | %.2f |\n", c.name.c_str(), call_ms, launch_ms);
      // The next case starts once the child's kernel is over too.
      std::this_thread::sleep_for(std::chrono::milliseconds(elsewhere ? spin_ms : 0));
    }
  }
  return 0;
}
