// Bounded waits on non-blocking NCCL communicators (ncclConfig_t::blocking = 0), and the
// warm-up exchange of communicators just formed.
#pragma once

#include <nccl.h>

#include <chrono>
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
