#include "daemon/core/data_plane.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <new>

#include "daemon/core/log.h"

namespace epd {

StatusOr<DataPlaneExport> Backend::ExportDataPlane(BackendGroup& group, BackendHandle&) {
  return FailedPreconditionError(
      "group '{}': the {} backend has no device data plane; use the daemon's ops",
      group.config().name, Describe().backend);
}

StatusOr<uint64_t> Backend::ResetDataPlane(BackendGroup& group, int) {
  return FailedPreconditionError("group '{}': the {} backend has no device data plane",
                                 group.config().name, Describe().backend);
}

StatusOr<std::unique_ptr<GroupStateOwner>> GroupStateOwner::Create(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0660);
  if (fd < 0) return InternalError("shm_open('{}') failed: {}", name, std::strerror(errno));
  // NOTE: 0660 despite the umask: frontends of the daemon's group map it.
  if (fchmod(fd, 0660) != 0 || ftruncate(fd, kGroupStatePageBytes) != 0) {
    const int error = errno;
    close(fd);
    shm_unlink(name.c_str());
    return InternalError("sizing the group state page '{}' failed: {}", name,
                         std::strerror(error));
  }
  void* data = mmap(nullptr, kGroupStatePageBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) {
    const int error = errno;
    shm_unlink(name.c_str());
    return InternalError("mmap of the group state page '{}' failed: {}", name,
                         std::strerror(error));
  }
  auto* page = new (data) GroupStatePage{kGroupStateMagic, kGroupStateVersion,
                                         sizeof(GroupStatePage), 0, {0}, {0}};
  return std::unique_ptr<GroupStateOwner>(new GroupStateOwner(name, page));
}

GroupStateOwner::~GroupStateOwner() {
  if (munmap(page_, kGroupStatePageBytes) != 0) {
    EPD_LOG(kCore, warn, "munmap of the group state page '{}' failed: {}", name_,
            std::strerror(errno));
  }
  if (shm_unlink(name_.c_str()) != 0) {
    EPD_LOG(kCore, warn, "shm_unlink('{}') failed: {}", name_, std::strerror(errno));
  }
}

void GroupStateOwner::Publish(uint64_t epoch, uint64_t sequence_base) {
  page_->sequence_base.store(sequence_base, std::memory_order_relaxed);
  page_->epoch.store(epoch, std::memory_order_release);
}

MemorySource GroupStateOwner::source() const {
  MemorySource source;
  source.kind = MemorySource::Kind::kHostShm;
  source.shm_name = name_;
  source.size = kGroupStatePageBytes;
  return source;
}

StatusOr<std::unique_ptr<GroupDataPlane>> GroupDataPlane::Create(
    const std::string& state_page_name, uint64_t sequence_base) {
  EPD_ASSIGN_OR_RETURN(auto state, GroupStateOwner::Create(state_page_name));
  std::unique_ptr<GroupDataPlane> plane(new GroupDataPlane(std::move(state)));
  plane->BeginEpoch(sequence_base);
  return plane;
}

Status GroupDataPlane::Attach(int group_rank, uint64_t session) {
  auto [it, inserted] = launchers_.emplace(group_rank, session);
  if (!inserted && it->second != session) {
    return FailedPreconditionError("group rank {} is launched by session {:016x}", group_rank,
                                   it->second);
  }
  return OkStatus();
}

std::vector<int> GroupDataPlane::Release(uint64_t session) {
  std::vector<int> released;
  for (auto it = launchers_.begin(); it != launchers_.end();) {
    if (it->second == session) {
      released.push_back(it->first);
      it = launchers_.erase(it);
    } else {
      ++it;
    }
  }
  return released;
}

void GroupDataPlane::BeginEpoch(uint64_t sequence_base) {
  ++epoch_;
  sequence_base_ = sequence_base;
  state_->Publish(epoch_, sequence_base_);
}

}  // namespace epd
