// Which data path a handle's ops take, and the checks of a data-plane descriptor.
//
// Daemon streams: the frontend posts ops (RPCs on the session stream, ordered on the GPU by
// fences) and the daemon launches the kernels in its own CUDA context. Works for every client,
// with or without CUDA, and costs a few us per op when the GPUs run an MPS server; without
// MPS every hand-off between the two contexts is a time-sliced context switch (~200 us on
// H200, two per op).
// Frontend-launched: the frontend launches the same kernels on its own stream, in its own
// context, against daemon-owned memory mapped once (Session::AttachDataPlane, FrontendOps):
// no RPC and no context switch per op, capturable in CUDA graphs. Needs a CUDA client, and
// every rank of the group on this path.
#pragma once

#include <optional>
#include <string_view>

#include "common/status.h"
#include "epd/v1/epd.pb.h"

namespace epd {

enum class DataPath { kDaemonStreams, kFrontendLaunched };

std::string_view DataPathName(DataPath path);
// "daemon" / "daemon-streams" or "frontend" / "frontend-launched"; `field` names the source.
StatusOr<DataPath> ParseDataPath(std::string_view text, std::string_view field);

// The default for a frontend of `node_rank`: daemon streams where the daemon's context on that
// GPU is an MPS client (a few us per op, nothing mapped) or the client has no CUDA;
// frontend-launched otherwise. `requested` (e.g. from EPD_DATA_PATH) wins when set, except
// that frontend-launched needs a CUDA client and a cuda backend (FAILED_PRECONDITION).
StatusOr<DataPath> ChooseDataPath(const v1::NodeInfo& node, int node_rank, bool client_has_cuda,
                                  std::optional<DataPath> requested);

// The environment's choice: EPD_DATA_PATH unset or empty gives nullopt.
StatusOr<std::optional<DataPath>> DataPathFromEnvironment();

// GPUs one frontend-launched group spans at most (kernels/sync_area.cuh kMaxRanks).
constexpr int kMaxDataPlaneRanks = 8;
// Handle slots of one rank in a group's peer tables (kernels/sync_area.cuh kMaxHandleSlots).
constexpr int kMaxDataPlaneHandleSlots = 128;

// Checks an AttachDataPlane answer before anything is mapped: every region is CUDA IPC memory
// large enough for what the offsets and the group's sizes place in it, one peer per group
// rank in order, a state page, bounded waits. INVALID_ARGUMENT naming the field.
Status ValidateDataPlaneInfo(const v1::DataPlaneInfo& info);

}  // namespace epd
