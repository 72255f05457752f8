// epd-release-stall-bench: which CUDA calls that give memory back wait for a running kernel,
// and whether another thread's launch waits with them (docs/design.md §7, "Giving memory
// back": why the cuda backend's Reclaimer never calls cudaFree, cudaFreeHost or
// cudaIpcCloseMemHandle while serving).
//
// For each release call: a kernel spins for --spin-ms on one stream; 20 ms in, one thread
// makes the call while, 20 ms later, another thread launches a tiny kernel on a second stream.
// Reported: how long the call and the launch took. Exit 77 without a GPU.
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

// A child process exporting one allocation (a handle cannot be opened by its own process).
struct Exporter {
  pid_t pid = -1;
  int release_fd = -1;
  cudaIpcMemHandle_t handle{};
  bool Start() {
    int to_parent[2], to_child[2];
    if (pipe(to_parent) != 0 || pipe(to_child) != 0) return false;
    pid = fork();  // before this process touches CUDA
    if (pid == 0) {
      close(to_parent[0]);
      close(to_child[1]);  // else its read below never sees the parent let go
      void* data = nullptr;
      cudaIpcMemHandle_t h{};
      const bool ok =
          cudaMalloc(&data, 2 << 20) == cudaSuccess && cudaIpcGetMemHandle(&h, data) == cudaSuccess;
      if (!ok || write(to_parent[1], &h, sizeof(h)) != sizeof(h)) _exit(1);
      char c;
      while (read(to_child[0], &c, 1) > 0) {
      }
      _exit(0);
    }
    close(to_parent[1]);
    close(to_child[0]);
    release_fd = to_child[1];
    return read(to_parent[0], &handle, sizeof(handle)) == sizeof(handle);
  }
  ~Exporter() {
    if (release_fd >= 0) close(release_fd);
    if (pid > 0) waitpid(pid, nullptr, 0);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each row as it is measured
  const long long spin_ms =
      argc > 2 && std::string(argv[1]) == "--spin-ms" ? std::atoll(argv[2]) : 400;
  Exporter exporter;
  const bool have_export = exporter.Start();
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
      "20 ms later\n\n",
      prop.name, spin_ms);
  std::printf("| release call | call took (ms) | other thread's launch took (ms) |\n");
  std::printf("|---|---|---|\n");
  for (Case& c : cases) {
    c.prepare();
    if (!Check(cudaDeviceSynchronize(), c.name.c_str())) return 1;
    SpinFor<<<1, 32, 0, spinning>>>(spin_ms * 1'000'000);
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
  }
  return 0;
}
