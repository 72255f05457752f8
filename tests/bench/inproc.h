// Mode (a): the backend called in-process, one thread per rank calling UpdateHandle /
// Dispatch / Combine directly, the way the daemon's rank workers do.
//
// cuda backend: GPU time from events on each rank's daemon stream (CudaBackendStream), the
// ops held behind a gate until every rank enqueued them. cpu backend: host clock around the
// op plus Complete().
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "daemon/core/backend.h"
#include "tests/bench/bench_case.h"

namespace epd::bench {

struct RunSettings {
  int warmup = 10;
  int iterations = 100;
  bool check = true;
  std::chrono::milliseconds op_timeout{30'000};
};


class InprocRunner {
 public:
  // backend: "cpu" or "cuda". gpus[r]: the GPU of rank r on the cuda backend (empty: r).
  static StatusOr<std::unique_ptr<InprocRunner>> Create(const std::string& backend, int ranks,
                                                        const std::vector<int>& gpus,
                                                        std::chrono::milliseconds op_timeout);
  ~InprocRunner();
  Backend& backend() { return *backend_; }
  bool on_gpu() const { return on_gpu_; }

  Result Run(const Case& c, const RunSettings& settings);

 private:
  InprocRunner() = default;
  struct RankState;
  struct Sync;
  Status RunRank(const Case& c, const RunSettings& settings, BackendGroup& group,
                 std::vector<std::unique_ptr<BackendHandle>>& handles,
                 std::vector<std::unique_ptr<RankState>>& states, Sync& sync, int rank,
                 ModeSamples& samples, std::string& check);

  std::unique_ptr<Backend> backend_;
  bool on_gpu_ = false;
  int ranks_ = 0;
  std::vector<int> devices_;  // cuda: the GPU of each rank
};

}  // namespace epd::bench
