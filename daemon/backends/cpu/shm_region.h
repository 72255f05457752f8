// RAII POSIX shared memory mapping: the cpu backend's stand-in for CUDA IPC. Frontends create
// objects for their tensors; the daemon creates them for the memory it exports.
//
// Every mapping is watched by ShmFaultGuard, so a client that truncates an object cannot
// crash the daemon: Broken() turns true and ops on the memory fail instead.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "daemon/core/backend.h"

namespace epd {

class ShmRegion {
 public:
  // Creates (O_EXCL) a zero-filled object of `bytes` with `mode`, its pages allocated up
  // front (RESOURCE_EXHAUSTED when /dev/shm is too small, instead of a fault at first use);
  // `group`, when set, becomes the object's group. It is unlinked when the region dies.
  static StatusOr<std::unique_ptr<ShmRegion>> Create(const std::string& name, size_t bytes,
                                                     mode_t mode = 0660,
                                                     std::optional<gid_t> group = std::nullopt);
  // Maps bytes [offset, offset + size) of an existing object (size 0: up to its end).
  // `requester`, when set, must have been able to open the object read-write itself: a
  // regular file, not a link, whose owner/group/other bits grant that user read and write.
  // `field` names the request field in errors.
  static StatusOr<std::unique_ptr<ShmRegion>> Open(
      const std::string& name, std::string_view field, uint64_t offset = 0, uint64_t size = 0,
      const std::optional<MemoryRequester>& requester = std::nullopt);
  ~ShmRegion();
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;

  void* data() const { return static_cast<char*>(mapping_) + lead_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  // The object was truncated under the mapping: its contents are gone for the daemon.
  bool Broken() const;

 private:
  ShmRegion(std::string name, void* mapping, size_t mapped, size_t lead, size_t size, bool owner,
            int guard_slot)
      : name_(std::move(name)),
        mapping_(mapping),
        mapped_(mapped),
        lead_(lead),
        size_(size),
        owner_(owner),
        guard_slot_(guard_slot) {}
  std::string name_;
  void* mapping_;  // page aligned
  size_t mapped_;  // bytes mapped
  size_t lead_;    // from mapping_ to the first byte asked for
  size_t size_;
  bool owner_;
  int guard_slot_;
};

// A valid POSIX shm name: "/" followed by 1-200 characters without "/".
Status ValidateShmName(const std::string& name, std::string_view field);

// Whether a user (uid and groups) could open a file owned by `owner_uid`:`owner_gid` with
// permission bits `mode` read-write.
bool MayOpenReadWrite(uid_t owner_uid, gid_t owner_gid, mode_t mode,
                      const MemoryRequester& requester);

}  // namespace epd
