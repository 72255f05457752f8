// Device-only helpers shared by the kernels' .cu files (never included by host code):
// scoped loads/stores for flags, the global timer for bounded waits, 16-byte row copies,
// and the ticket / leader / finish protocol every collective kernel follows.
#pragma once

#include <cstdint>

#include "kernels/device_error.cuh"
#include "kernels/sync_area.cuh"

namespace epd::kernels::detail {

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint64_t LoadAcquireSys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t LoadRelaxedSys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t LoadAcquireGpu(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreReleaseSys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void StoreRelaxedSys(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void StoreReleaseGpu(uint64_t* p, uint64_t v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Read-only input (never written while the kernel runs): non-coherent path, no L1 pollution.
__device__ __forceinline__ int4 LoadStreaming(const int4* p) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ SyncArea* AsSync(void* p) { return static_cast<SyncArea*>(p); }
__device__ __forceinline__ int32_t* SyncBases(void* p) {
  return reinterpret_cast<int32_t*>(static_cast<char*>(p) + SyncBasesOffset());
}
__device__ __forceinline__ uint64_t* SyncInbox(void* p, int experts) {
  return reinterpret_cast<uint64_t*>(static_cast<char*>(p) + SyncInboxOffset(experts));
}

// A warp copies one row of `vectors` 16-byte vectors; four loads in flight per lane.
__device__ __forceinline__ void WarpCopyRow(int4* dst, const int4* src, int vectors, int lane) {
  int v = lane;
  for (; v + 96 < vectors; v += 128) {
    const int4 a = LoadStreaming(src + v), b = LoadStreaming(src + v + 32),
               c = LoadStreaming(src + v + 64), d = LoadStreaming(src + v + 96);
    dst[v] = a;
    dst[v + 32] = b;
    dst[v + 64] = c;
    dst[v + 96] = d;
  }
  for (; v < vectors; v += 32) dst[v] = LoadStreaming(src + v);
}

__device__ __forceinline__ void WarpZeroRow(int4* dst, int vectors, int lane) {
  const int4 zero = make_int4(0, 0, 0, 0);
  for (int v = lane; v < vectors; v += 32) dst[v] = zero;
}

__device__ __forceinline__ void ReportPeerTimeout(DeviceError* error, int phase, int peer,
                                                  uint64_t seq, uint64_t seen) {
  error->a = phase;
  error->b = peer;
  error->c = 0;
  error->value = static_cast<int64_t>(seq);
  error->value2 = static_cast<int64_t>(seen);
  error->code = kDeviceErrorPeerTimeout;
}

// Spins (one thread) until *flag >= seq; false on timeout.
__device__ __forceinline__ bool WaitFlagAtLeast(const uint64_t* flag, uint64_t seq,
                                                uint64_t timeout_ns, uint64_t* seen) {
  const uint64_t start = GlobalTimerNs();
  uint64_t v = LoadAcquireSys(flag);
  while (v < seq) {
    if (GlobalTimerNs() - start > timeout_ns) {
      *seen = v;
      return false;
    }
    __nanosleep(64);
    v = LoadAcquireSys(flag);
  }
  return true;
}

// Block ticket: the first block to arrive (not blockIdx 0, which may not be resident yet)
// leads the op, so no block ever waits for a block that has not been scheduled.
__device__ __forceinline__ unsigned TakeTicket(SyncArea* me) {
  __shared__ unsigned ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(&me->control.arrive, 1u);
  __syncthreads();
  return ticket;
}

// Leader: publish the go word (after all of the leader's writes are visible on this GPU).
__device__ __forceinline__ void PublishGo(SyncArea* me, uint64_t seq, uint64_t flags) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    StoreReleaseGpu(&me->control.go, (seq << 2) | flags);
  }
}

// Followers: wait for the leader's go word; returns its flags. The leader is running (it
// took the first ticket) and bounded by timeout_ns itself, so this wait is bounded too.
__device__ __forceinline__ uint64_t AwaitGo(SyncArea* me, uint64_t seq, uint64_t timeout_ns) {
  __shared__ uint64_t flags;
  if (threadIdx.x == 0) {
    const uint64_t start = GlobalTimerNs();
    uint64_t v = LoadAcquireGpu(&me->control.go);
    while ((v >> 2) < seq) {
      if (GlobalTimerNs() - start > 2 * timeout_ns + 1000000000ull) {
        v = (seq << 2) | kGoAbort;  // never observed: the leader reports its own timeout
        break;
      }
      __nanosleep(32);
      v = LoadAcquireGpu(&me->control.go);
    }
    flags = v & 3;
  }
  __syncthreads();
  return flags;
}

// Every block calls this after its rows: true in exactly one block, the last to finish,
// which has then seen (through the counter) every other block's work. remote_stores: the
// blocks wrote peer memory, which must be visible system-wide before the caller's flags.
// It also resets the ticket counters for the next op on this stream.
__device__ __forceinline__ bool FinishBlock(SyncArea* me, bool remote_stores) {
  __shared__ bool last;
  // NOTE: one fence by thread 0 after the barrier covers the whole block's stores: the
  // barrier orders them before it, and the fence is cumulative.
  __syncthreads();
  if (threadIdx.x == 0) {
    if (remote_stores) {
      __threadfence_system();
    } else {
      __threadfence();
    }
    const unsigned old = atomicAdd(&me->control.finish, 1u);
    last = old == gridDim.x - 1;
    if (last) {
      if (remote_stores) {
        __threadfence_system();
      } else {
        __threadfence();
      }
      me->control.finish = 0;
      me->control.arrive = 0;
    }
  }
  __syncthreads();
  return last;
}

}  // namespace epd::kernels::detail
