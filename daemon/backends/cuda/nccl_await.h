// Bounded waits on non-blocking NCCL communicators (ncclConfig_t::blocking = 0) and on events,
// the grouped exchange of messages with every peer, and the warm-up exchange of communicators
// just formed.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace epd::cuda {

// Polls every communicator until none is in progress (OK), one reports an error (UNAVAILABLE
// with NCCL's reason), `stopped` returns an error (that error), or the deadline passes
// (UNAVAILABLE "<what>: timed out").
Status AwaitComms(const std::vector<ncclComm_t>& comms,
                  std::chrono::steady_clock::time_point deadline,
                  const std::function<Status()>& stopped, std::string_view what);

// What one exchange moves of every message: message p starts at p * stride in both buffers,
// the part sent begins `offset` bytes into it, and send[p] / recv[p] bytes go to / come from
// rank p (both sides of a pair compute the same number; 0 moves nothing).
struct ExchangeSizes {
  int64_t stride = 0;
  int64_t offset = 0;
  std::vector<int64_t> send, recv;
};
// Whole messages of `bytes` each, to and from every rank.
ExchangeSizes UniformSizes(int world_size, int64_t bytes);

// One rank's part of a grouped exchange: message p of `send` to every other rank p of the
// communicator, message p of `recv` from it, on `stream`.
struct ExchangeSide {
  ncclComm_t comm = nullptr;
  int rank = 0;  // its rank in the communicator (its own messages are not sent)
  const char* send = nullptr;
  char* recv = nullptr;
  cudaStream_t stream = nullptr;
};
// Enqueues every side's sends and receives inside one ncclGroupStart / ncclGroupEnd (one
// process's ranks must be in one group: their sends and receives match each other). Returns
// the first NCCL error, else ncclSuccess; on a non-blocking communicator the group may still
// be in progress (AwaitComms).
ncclResult_t EnqueueExchange(const std::vector<ExchangeSide>& sides, int world_size,
                             const ExchangeSizes& sizes);

// Waits until the work `event` was recorded behind has run (OK), the event reports an error,
// `stopped` returns an error (that error), or the deadline passes (UNAVAILABLE "<what>: timed
// out"). Spins briefly, then sleeps between polls: a host waiting on a device step.
Status AwaitEvent(cudaEvent_t event, std::chrono::steady_clock::time_point deadline,
                  const std::function<Status()>& stopped, std::string_view what);

// One exchange of a few bytes between every pair of ranks over `comms` (comms[i] is group
// rank ranks[i] on GPU devices[i]; all of this process's ranks of the group), on private
// streams, waited for as AwaitComms waits, then until the streams are done.
//
// Why: NCCL loads its kernels lazily at their first launch, and loading a kernel waits for
// the kernels running in the context. A group's first exchange is enqueued behind its op's
// fence-wait kernel, which spins until the frontend signals, and a frontend may signal only
// once the op is answered, i.e. after that very exchange is enqueued: without this, a fenced
// first op waited out its timeout (measured on an H200). It also connects NCCL's channels to
// every peer before an op needs them.
Status WarmUpExchange(const std::vector<ncclComm_t>& comms, const std::vector<int>& ranks,
                      const std::vector<int>& devices, int world_size,
                      std::chrono::steady_clock::time_point deadline,
                      const std::function<Status()>& stopped, std::string_view what);

}  // namespace epd::cuda
