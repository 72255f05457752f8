// DeviceError: how a kernel reports a request error or a timeout without trap().
//
// Each enqueued op gets one record in host-mapped pinned memory; the kernel writes it with
// plain stores and the host reads it only after the op's event completed, so no atomics on
// host memory are needed. Exactly one thread per op writes a record (see the kernels).
#pragma once

#include <cstdint>

namespace epd::kernels {

enum DeviceErrorCode : int32_t {
  kDeviceErrorNone = 0,
  kDeviceErrorBadExpertId = 1,    // a = token, b = k, c = experts, value = the id
  kDeviceErrorCapacity = 2,       // a = expert, b = rows received, c = capacity
  kDeviceErrorPeerTimeout = 3,    // a = SyncPhase, b = peer group rank, value = seq, value2 = seen
  kDeviceErrorFenceTimeout = 4,   // value = awaited counter value, value2 = last seen
  kDeviceErrorPeerAbandoned = 5,  // a = SyncPhase, b = peer that gave up the op, c = 1 + whom
                                  // it timed out waiting for (0: other reason), value = seq
  kDeviceErrorAborted = 6,        // the host's abort word released the wait; value = seq
  kDeviceErrorRowCapacity = 7,    // high-throughput: a = group rank, b = rows, c = capacity
  kDeviceErrorBadWeight = 8,      // a = token, b = k, value = the float's bits (NaN or inf)
};

// Which flag a collective waited for when it timed out.
enum SyncPhase : int32_t {
  kSyncPhaseCounts = 0,  // dispatch: a peer's per-expert counts
  kSyncPhaseDone = 1,    // dispatch: a peer's "rows written" flag
  kSyncPhaseStart = 2,   // combine: a peer's "expert output ready" flag
  kSyncPhaseEnd = 3,     // combine: a peer's "finished reading" flag
  kSyncPhaseLeader = 4,  // a block waited for its own leader block (internal)
};

struct DeviceError {
  int32_t code;
  int32_t a, b, c;
  int64_t value;
  int64_t value2;
};

}  // namespace epd::kernels
