// The CUDA backend: the product data path (docs/design.md §2-§5).
//
// One non-blocking daemon-owned stream per (group, node rank) holding a handle (its lane,
// op_lane.h: a group's waits never hold back another group's ops), peer access between all local
// GPUs, an NCCL communicator per group, every buffer of a handle allocated at CreateHandle.
// Ops only enqueue work: UpdateHandle, Dispatch and Combine never allocate and never
// synchronise the host; ranks meet on the device through flags carrying per-op sequence
// numbers, every device wait is bounded by op_timeout, and Complete() reports device errors
// (bad expert id, capacity overflow, timeouts) as Status.
//
// Contract details the core relies on:
//  - Every rank of a group must issue the group's collectives in the same order (the k-th
//    collective of a group is op k on every rank). Each op carries only its own rank's
//    arguments: peers' receive buffers sit in per-rank PeerTables in device memory, written
//    once per handle (a rank may hold up to kernels::kMaxHandleSlots handles of a group, e.g.
//    one per layer; a dispatch names its destination's slot with the counts it exchanges), and
//    combine's expert outputs are exchanged through the SyncArea per op.
//  - A rank whose own arguments are rejected (or that Abandon()s) still counts the op and
//    marks it abandoned on its stream: peers waiting for it fail at once with its reason, and
//    the next op lines up again. A rank that times out marks the op abandoned too.
//  - Every device wait also polls the group's host-mapped abort word: AbortGroup (a member's
//    session ended) releases the ops issued so far and realigns the ranks' sequence numbers;
//    BeginShutdown releases every wait, fence waits included.
//  - Complete(handle) reports the errors of every op enqueued on the handle's lane since the
//    previous Complete() on that lane, in op order.
//  - Groups and handles must be destroyed before the backend.
// High-throughput groups run kernels/ht_dispatch.cuh and the combine kernel on their packed
// rows, on at most sm_budget blocks; on either data path (ExportDataPlane exports their plan).
// Groups that span daemons (both algorithms, token-dtype or fp8 dispatch) exchange messages
// through NCCL (cuda_span_ops.cc, span_comm.h): whole ones (low-latency), or counts first and
// then only the rows routed (high-throughput, finished by EnqueueDeferred).
// Not yet: replaying the collectives from a CUDA graph (each launch carries its op sequence
// number).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "daemon/core/backend.h"

namespace epd {

struct CudaBackendOptions {
  // CUDA device of each node rank; empty: all visible. A device may appear more than once
  // (ranks sharing a GPU; needs max_blocks_per_op small enough for their kernels to be
  // resident together).
  std::vector<int> devices;
  std::chrono::milliseconds op_timeout{10000};
  // NCCL communicators for each group (ncclCommInitAll), built when first used rather than
  // in CreateGroup. Off: a group refuses to build them.
  bool create_nccl_comms = true;
  // Upper bound on the blocks of one dispatch/combine kernel; 0: two per SM. A small bound
  // leaves SMs to the frontends' kernels, and lets several node ranks share one GPU (tests).
  int max_blocks_per_op = 0;
  // Called (at least once) per GPU whose context hit a sticky error (the daemon sets health
  // NOT_SERVING and exits for systemd to restart it).
  std::function<void(const Status&)> on_fatal_error;
};

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

// Gives each of the process's streams on a GPU its own hardware queue (up to 32), so that
// collective kernels of different ranks or groups never wait behind one another. Effective
// only before the process creates its first CUDA context; CreateCudaBackend calls it, and
// programs that touch CUDA earlier (tests) call it first.
void ReserveHardwareQueues();

// Multi-node: gives a backend made by CreateCudaBackend the cluster its spanning groups meet
// through (after the daemon joined, before any group exists); ignored by other backends.
void AttachCudaCluster(Backend& backend, std::shared_ptr<ClusterStore> cluster);

// The daemon stream `handle`'s ops run on (its group's lane of its rank), of a backend made by
// CreateCudaBackend (benchmarks record events on it); null for any other backend.
cudaStream_t CudaBackendStream(Backend& backend, BackendHandle& handle);
// IPC mappings released and not yet closed (daemon/backends/cuda/reclaimer.h) by the process's
// backends made by CreateCudaBackend (they share one reclaimer); 0 for any other backend.
size_t CudaBackendPendingCloses(Backend& backend);

}  // namespace epd
