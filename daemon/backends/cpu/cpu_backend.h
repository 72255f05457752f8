// The cpu reference backend: docs/design.md §3 on host memory, R ranks in one process, frontend
// tensors in POSIX shared memory. Used by CI, by machines without GPUs, and as the oracle of
// the GPU tests (through reference_ops.h).
#pragma once

#include <chrono>
#include <memory>

#include "daemon/core/backend.h"

namespace epd {

struct CpuBackendOptions {
  int ranks = 1;
  std::chrono::milliseconds op_timeout{10'000};
};

StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options);

}  // namespace epd
