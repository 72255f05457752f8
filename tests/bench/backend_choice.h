// The backend a benchmark's `--backend auto` stands for and the ranks it runs by default:
// the cuda backend on every GPU where this build has that backend and the machine a GPU,
// else the cpu backend with 2 ranks. Each benchmark's build sets the two macros it has.
#pragma once

#include <string>

#include "common/status.h"
#if EPD_BENCH_WITH_CUDA
#include "tests/bench/gpu_util.h"
#endif

namespace epd::bench {

struct BackendChoice {
  std::string backend;  // "cuda" or "cpu"
  int ranks = 0;
};

// `backend`: auto, cuda or cpu; `ranks` <= 0: the default.
inline StatusOr<BackendChoice> ChooseBackend(const std::string& backend, int ranks) {
  int gpus = 0;
#if EPD_BENCH_WITH_CUDA
  gpus = gpu::DeviceCount();
#endif
  BackendChoice choice{backend, ranks};
  if (backend == "auto") {
    choice.backend = "cpu";
#if EPD_BENCH_WITH_CUDA_BACKEND
    if (gpus > 0) choice.backend = "cuda";
#endif
  } else if (backend != "cuda" && backend != "cpu") {
    return InvalidArgumentError("--backend {} must be auto, cuda or cpu", backend);
  }
  if (choice.ranks <= 0) choice.ranks = choice.backend == "cuda" && gpus > 0 ? gpus : 2;
  return choice;
}

}  // namespace epd::bench
