#include "client/epd/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

namespace epd {
namespace {

std::string UniqueName() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return fmt::format("/epd-client-{}-{}-{:x}", getpid(), counter.fetch_add(1), salt & 0xffffff);
}

Status ErrnoError(std::string_view what, const std::string& name, int err) {
  const StatusCode code = err == ENOENT                    ? StatusCode::kNotFound
                          : err == EEXIST                  ? StatusCode::kAlreadyExists
                          : err == ENOMEM || err == ENOSPC ? StatusCode::kResourceExhausted
                          : err == EACCES                  ? StatusCode::kPermissionDenied
                                                           : StatusCode::kInternal;
  return Status(code, fmt::format("{} '{}': {}", what, name, std::strerror(err)));
}

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

}  // namespace

StatusOr<std::unique_ptr<SharedMemoryBuffer>> SharedMemoryBuffer::Create(size_t size_bytes,
                                                                         std::string name) {
  if (size_bytes == 0) return InvalidArgumentError("shared memory size must be > 0");
  if (name.empty()) name = UniqueName();
  if (name[0] != '/') return InvalidArgumentError("shm name '{}' must start with '/'", name);
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0660);
  if (fd < 0) return ErrnoError("shm_open", name, errno);
  auto buffer = std::unique_ptr<SharedMemoryBuffer>(new SharedMemoryBuffer());
  buffer->name_ = name;
  buffer->owner_ = true;
  if (ftruncate(fd, static_cast<off_t>(size_bytes)) != 0) {
    const int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    return ErrnoError("ftruncate", name, err);
  }
  void* p = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(name.c_str());
    return ErrnoError("mmap", name, err);
  }
  buffer->mapping_ = buffer->data_ = p;
  buffer->mapping_bytes_ = buffer->size_ = size_bytes;
  return buffer;  // ftruncate zero-fills
}

StatusOr<std::unique_ptr<SharedMemoryBuffer>> SharedMemoryBuffer::Open(const std::string& name,
                                                                       size_t offset,
                                                                       size_t size_bytes) {
  if (size_bytes == 0) return InvalidArgumentError("mapping of '{}' has size 0", name);
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) return ErrnoError("shm_open", name, errno);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError("fstat", name, err);
  }
  if (offset + size_bytes > static_cast<size_t>(st.st_size)) {
    close(fd);
    return OutOfRange(name, offset, size_bytes, static_cast<size_t>(st.st_size));
  }
  const size_t page_offset = offset / PageSize() * PageSize();
  const size_t mapping_bytes = offset + size_bytes - page_offset;
  void* p = mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                 static_cast<off_t>(page_offset));
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) return ErrnoError("mmap", name, err);
  auto buffer = std::unique_ptr<SharedMemoryBuffer>(new SharedMemoryBuffer());
  buffer->name_ = name;
  buffer->mapping_ = p;
  buffer->mapping_bytes_ = mapping_bytes;
  buffer->data_ = static_cast<char*>(p) + (offset - page_offset);
  buffer->size_ = size_bytes;
  return buffer;
}

Status SharedMemoryBuffer::OutOfRange(const std::string& name, size_t offset, size_t size,
                                      size_t object_size) {
  return InvalidArgumentError("range [{}, {}) is outside shm object '{}' of {} bytes", offset,
                              offset + size, name, object_size);
}

SharedMemoryBuffer::~SharedMemoryBuffer() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
  if (owner_) Unlink().IgnoreError();  // best effort: nothing to report to at destruction
}

Status SharedMemoryBuffer::Unlink() {
  if (!owner_) return FailedPreconditionError("'{}' is not owned by this mapping", name_);
  if (unlinked_) return OkStatus();
  unlinked_ = true;
  if (shm_unlink(name_.c_str()) != 0) return ErrnoError("shm_unlink", name_, errno);
  return OkStatus();
}

v1::MemorySource SharedMemoryBuffer::Source(uint64_t offset, uint64_t size) const {
  v1::MemorySource source;
  source.set_shm_name(name_);
  source.set_device(-1);
  source.set_offset(offset);
  source.set_size(size != 0 ? size : size_ - offset);
  return source;
}

}  // namespace epd
