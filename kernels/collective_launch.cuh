// CollectiveLaunch: what the parameters of every collective kernel (dispatch, high-throughput
// dispatch, combine) carry about the group and the op, whoever launches it: the daemon on its
// streams (daemon/backends/cuda/cuda_ops.cc) or a frontend on its own
// (client/frontend_ops.cc). Each kernel's params struct derives from it, so the kernels read
// p.rank, p.sync, ... as before and each launcher fills these fields in one place.
#pragma once

#include <cstdint>

#include "kernels/device_error.cuh"
#include "kernels/sync_area.cuh"

namespace epd::kernels {

struct CollectiveLaunch {
  int world_size = 0;
  int rank = 0;                      // this rank's group rank
  SyncAreas sync{};                  // every rank's SyncArea
  const PeerTable* peers = nullptr;  // this rank's, in device memory
  int handle_slot = 0;               // where this rank's own receive buffers are published
  const uint64_t* abort = nullptr;   // the group's host-mapped abort word (null: none)
  // The op's sequence number; 0: device-numbered (graph-replayable), one above the larger
  // of the last collective this rank ran (its SyncArea's control.seq) and seq_floor.
  uint64_t seq = 0;
  uint64_t seq_floor = 0;
  uint64_t timeout_ns = 0;
  DeviceError* error = nullptr;
  DeviceFenceSignal signal;  // the op's fence signal (sync_area.cuh)
};

}  // namespace epd::kernels
