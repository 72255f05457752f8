// The cpu reference backend: docs/design.md §3 on host memory, R ranks in one process, frontend
// tensors in POSIX shared memory. Used by CI, by machines without GPUs, and as the oracle of
// the GPU tests (through reference_ops.h).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <memory>

#include "daemon/core/backend.h"

namespace epd {

struct CpuBackendOptions {
  CpuBackendOptions() = default;
  // The single-daemon options; the multi-node ones stay unset (no braced list leaves them
  // uninitialised for -Wmissing-field-initializers to flag at every call).
  CpuBackendOptions(int ranks, std::chrono::milliseconds op_timeout)
      : ranks(ranks), op_timeout(op_timeout) {}

  int ranks = 1;
  std::chrono::milliseconds op_timeout{10'000};
  // Multi-node: groups with spans_nodes exchange with the other daemons through gloo over TCP
  // on cluster->transport_host(), meeting through the leader's store. Null: running alone.
  std::shared_ptr<ClusterStore> cluster;
};

// The group `epd` (deploy/epd.service) when it exists and the daemon runs as root, so that
// frontends of that group can open handle and fence objects read-write; else nullopt.
std::optional<gid_t> DefaultExportedShmGroup();

// `exported_shm_group`: group given to the handle and fence objects the daemon creates;
// nullopt: the daemon's own.
StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    const CpuBackendOptions& options, std::optional<gid_t> exported_shm_group = std::nullopt);

}  // namespace epd
