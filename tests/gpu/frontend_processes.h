// Helpers of the GPU tests that drive frontend processes: how many GPUs this process sees,
// the memory in use on GPU 0, the children of a process (the example frontend forks one
// process per rank), and the one-GPU fp32 group the graph-capture tests use.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <sys/types.h>

#include <fstream>
#include <string>
#include <vector>

#include "epd/v1/epd.pb.h"

namespace epd::testing {

inline int VisibleGpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

// The memory in use on GPU 0, MiB: every process's, this one's context included (it makes
// GPU 0 current).
inline double Gpu0UsedMiB() {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(0) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    ADD_FAILURE() << "cudaMemGetInfo on GPU 0 failed";
    return 0;
  }
  return static_cast<double>(total_bytes - free_bytes) / (1 << 20);
}

inline std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) +
                     "/children");
  std::vector<pid_t> children;
  pid_t child;
  while (file >> child) children.push_back(child);
  return children;
}

inline v1::GroupConfig OneGpuFp32Group(const std::string& name, int tokens, int hidden,
                                       int top_k, int experts) {
  v1::GroupConfig config;
  config.set_name(name);
  config.add_ranks(0);
  config.set_experts(experts);
  config.set_hidden(hidden);
  config.set_max_tokens_per_rank(tokens);
  config.set_top_k(top_k);
  config.set_dtype(v1::DTYPE_FP32);
  return config;
}

}  // namespace epd::testing
