// The daemon's side of the frontend-launched data path.
//
// On a node without MPS every hand-off between a frontend's CUDA context and the daemon's is
// a context switch (~200 us on H200), so frontends there launch epd's kernels themselves, on
// their own streams, against memory the daemon owns. The daemon keeps what makes it a daemon:
// it allocates the handles, validates the attachment, tells the frontend what to map
// (DataPlaneInfo), and when a frontend-launched rank's frontend ends it resets the group's
// device synchronisation so that the survivors fail their pending op with a clear error and
// the group carries on.
//
// Sequence numbers: every collective of a group carries an op sequence number that all ranks
// agree on without talking. A group's GroupDataPlane publishes (epoch, sequence_base) on a
// state page (common/group_state_page.h); the n-th collective a frontend launches in an
// epoch is sequence_base + n on every rank. A reset starts a new epoch above every number
// used before.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/group_state_page.h"
#include "common/status.h"
#include "daemon/core/backend.h"

namespace epd {

// One group rank as a frontend-launched peer sees it: its receive region (the exported
// handle region, laid out as HandleLayout says) and its sync area.
struct DataPlanePeer {
  int group_rank = 0;
  int node_rank = 0;
  MemorySource recv;
  MemorySource sync;
  // The peer-table slot its handle's receive buffers are published in: a dispatch source
  // sends its slot with its counts, so a frontend builds its own table indexed by it.
  int handle_slot = 0;
};

// Everything a frontend needs to launch a handle's ops itself (AttachDataPlane's answer).
struct DataPlaneInfo {
  uint64_t handle_id = 0;
  int group_rank = 0;
  GroupConfig config;
  HandleLayout layout;  // of every rank's receive region
  MemorySource private_region;
  HandlePrivateOffsets private_offsets;
  std::vector<DataPlanePeer> peers;  // by group rank, this rank included
  uint64_t sync_area_bytes = 0;
  MemorySource state_page;  // the group's GroupStatePage (POSIX shared memory)
  uint64_t epoch = 0;
  uint64_t sequence_base = 0;
  uint64_t timeout_ns = 0;  // bound of every device wait
  int max_blocks = 1;
};

// The group's state page: a POSIX shared memory object of kGroupStatePageBytes, mode 0660,
// unlinked when the owner dies.
class GroupStateOwner {
 public:
  static StatusOr<std::unique_ptr<GroupStateOwner>> Create(const std::string& name);
  ~GroupStateOwner();
  GroupStateOwner(const GroupStateOwner&) = delete;
  GroupStateOwner& operator=(const GroupStateOwner&) = delete;

  void Publish(uint64_t epoch, uint64_t sequence_base);
  MemorySource source() const;
  const GroupStatePage& page() const { return *page_; }

 private:
  GroupStateOwner(std::string name, GroupStatePage* page) : name_(std::move(name)), page_(page) {}
  std::string name_;
  GroupStatePage* page_;
};

// Which ranks of a group launch their own ops, and for which session; the epoch and sequence
// base. Guarded by its group's data_plane_mutex; device work (ResetDataPlane) happens outside it.
class GroupDataPlane {
 public:
  static StatusOr<std::unique_ptr<GroupDataPlane>> Create(const std::string& state_page_name,
                                                          uint64_t sequence_base);

  uint64_t epoch() const { return epoch_; }
  uint64_t sequence_base() const { return sequence_base_; }
  MemorySource state_page() const { return state_->source(); }
  const GroupStatePage& page() const { return state_->page(); }

  // The rank is launched by `session` from now on; FAILED_PRECONDITION naming the session
  // when another session launches it.
  Status Attach(int group_rank, uint64_t session);
  bool launched(int group_rank) const { return launchers_.count(group_rank) != 0; }
  bool any_launched() const { return !launchers_.empty(); }
  // The ranks `session` launched, now released (their frontend ended).
  std::vector<int> Release(uint64_t session);
  // A new epoch starting above `sequence_base` (what ResetDataPlane returned).
  void BeginEpoch(uint64_t sequence_base);

 private:
  explicit GroupDataPlane(std::unique_ptr<GroupStateOwner> state) : state_(std::move(state)) {}
  std::unique_ptr<GroupStateOwner> state_;
  uint64_t epoch_ = 0;
  uint64_t sequence_base_ = 0;
  std::map<int, uint64_t> launchers_;  // group rank -> session
};

}  // namespace epd
