#include "daemon/backends/cpu/shm_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "daemon/backends/cpu/shm_fault_guard.h"
#include "daemon/core/log.h"

namespace epd {
namespace {

// Closes an fd on every return path.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

size_t PageBytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

Status ValidateShmName(const std::string& name, std::string_view field) {
  if (name.size() < 2 || name.size() > 201 || name[0] != '/' ||
      name.find('/', 1) != std::string::npos) {
    return InvalidArgumentError(
        "{} = '{}' is not a shared memory name ('/' then 1-200 characters without '/')", field,
        name);
  }
  return OkStatus();
}

bool MayOpenReadWrite(uid_t owner_uid, gid_t owner_gid, mode_t mode,
                      const MemoryRequester& requester) {
  if (requester.uid == 0) return true;  // root could open it anyway
  // NOTE: exactly one class applies, as in the kernel: an owner without rw is refused even
  // when group or other bits would allow it.
  if (static_cast<int64_t>(owner_uid) == requester.uid) return (mode & 0600) == 0600;
  const bool member = std::find(requester.groups.begin(), requester.groups.end(),
                                static_cast<uint32_t>(owner_gid)) != requester.groups.end();
  if (member) return (mode & 0060) == 0060;
  return (mode & 0006) == 0006;
}

StatusOr<std::unique_ptr<ShmRegion>> ShmRegion::Create(const std::string& name, size_t bytes,
                                                       mode_t mode, std::optional<gid_t> group) {
  EPD_RETURN_IF_ERROR(ValidateShmName(name, "shm name"));
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, mode);
  if (fd < 0) return InternalError("shm_open('{}') failed: {}", name, std::strerror(errno));
  FdCloser closer(fd);
  auto fail = [&](Status status) {
    shm_unlink(name.c_str());
    return status;
  };
  // The umask may have cleared bits of `mode` (e.g. group write under 022).
  if (fchmod(fd, mode) != 0) {
    return fail(InternalError("fchmod('{}', {:o}) failed: {}", name, mode, std::strerror(errno)));
  }
  if (group.has_value() && fchown(fd, static_cast<uid_t>(-1), *group) != 0) {
    return fail(InternalError("fchown('{}', gid {}) failed: {}", name, *group,
                              std::strerror(errno)));
  }
  // posix_fallocate allocates every page now: a /dev/shm too small fails here, not with a
  // SIGBUS at the first dispatch.
  if (const int error = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); error != 0) {
    return fail(ResourceExhaustedError(
        "cannot allocate {} bytes of shared memory for '{}': {} (is /dev/shm large enough?)",
        bytes, name, std::strerror(error)));
  }
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) {
    return fail(ResourceExhaustedError("mmap('{}', {}) failed: {}", name, bytes,
                                       std::strerror(errno)));
  }
  auto slot = ShmFaultGuard::Watch(data, bytes);
  if (!slot.ok()) {
    munmap(data, bytes);
    return fail(slot.status());
  }
  return std::unique_ptr<ShmRegion>(
      new ShmRegion(name, data, bytes, 0, bytes, /*owner=*/true, *slot));
}

StatusOr<std::unique_ptr<ShmRegion>> ShmRegion::Open(
    const std::string& name, std::string_view field, uint64_t offset, uint64_t size,
    const std::optional<MemoryRequester>& requester) {
  EPD_RETURN_IF_ERROR(ValidateShmName(name, field));
  // O_NOFOLLOW: a link planted in /dev/shm must not lead the daemon to another file;
  // O_NONBLOCK: opening a FIFO someone made there must not block.
  const int fd = shm_open(name.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK, 0);
  if (fd < 0) {
    return NotFoundError("{} = '{}' cannot be opened: {}", field, name, std::strerror(errno));
  }
  FdCloser closer(fd);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return InternalError("{} = '{}': fstat failed: {}", field, name, std::strerror(errno));
  }
  // Checked on the opened fd, so the object cannot be swapped between check and use.
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgumentError("{} = '{}' is not a regular shared memory object", field, name);
  }
  if (requester.has_value() && !MayOpenReadWrite(st.st_uid, st.st_gid, st.st_mode, *requester)) {
    return PermissionDeniedError(
        "{} = '{}' (owner uid {}, gid {}, mode {:04o}) could not be opened read-write by the "
        "calling user (uid {}); the daemon opens only what its client could",
        field, name, st.st_uid, st.st_gid, st.st_mode & 07777, requester->uid);
  }
  if (st.st_size <= 0) return InvalidArgumentError("{} = '{}' is empty", field, name);
  const auto object_bytes = static_cast<uint64_t>(st.st_size);
  if (size == 0 && offset < object_bytes) size = object_bytes - offset;
  if (offset > object_bytes || size > object_bytes - offset) {
    return InvalidArgumentError(
        "source (offset = {}, size = {}) lies outside shm object '{}' of {} bytes", offset, size,
        name, object_bytes);
  }
  // Only the registered range is mapped: a sparse multi-terabyte object costs the daemon no
  // more address space than the client registered.
  const uint64_t lead = offset % PageBytes();
  const uint64_t mapped = lead + size;
  void* data = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                    static_cast<off_t>(offset - lead));
  if (data == MAP_FAILED) {
    return ResourceExhaustedError("{} = '{}' cannot be mapped ({} bytes): {}", field, name,
                                  mapped, std::strerror(errno));
  }
  auto slot = ShmFaultGuard::Watch(data, mapped);
  if (!slot.ok()) {
    munmap(data, mapped);
    return slot.status();
  }
  return std::unique_ptr<ShmRegion>(
      new ShmRegion(name, data, mapped, lead, size, /*owner=*/false, *slot));
}

bool ShmRegion::Broken() const { return ShmFaultGuard::Broken(guard_slot_); }

ShmRegion::~ShmRegion() {
  ShmFaultGuard::Unwatch(guard_slot_);
  if (munmap(mapping_, mapped_) != 0) {
    EPD_LOG(kCpu, warn, "munmap('{}') failed: {}", name_, std::strerror(errno));
  }
  if (owner_ && shm_unlink(name_.c_str()) != 0) {
    EPD_LOG(kCpu, warn, "shm_unlink('{}') failed: {}", name_, std::strerror(errno));
  }
}

}  // namespace epd
