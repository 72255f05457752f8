#include "daemon/backends/cpu/shm_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "daemon/core/log.h"

namespace epd {

Status ValidateShmName(const std::string& name, std::string_view field) {
  if (name.size() < 2 || name.size() > 201 || name[0] != '/' ||
      name.find('/', 1) != std::string::npos) {
    return InvalidArgumentError(
        "{} = '{}' is not a shared memory name ('/' then 1-200 characters without '/')", field,
        name);
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<ShmRegion>> ShmRegion::Create(const std::string& name, size_t bytes) {
  EPD_RETURN_IF_ERROR(ValidateShmName(name, "shm name"));
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0660);
  if (fd < 0) return InternalError("shm_open('{}') failed: {}", name, std::strerror(errno));
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int error = errno;
    close(fd);
    shm_unlink(name.c_str());
    return ResourceExhaustedError("ftruncate('{}', {}) failed: {}", name, bytes,
                                  std::strerror(error));
  }
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int error = errno;
  close(fd);
  if (data == MAP_FAILED) {
    shm_unlink(name.c_str());
    return ResourceExhaustedError("mmap('{}', {}) failed: {}", name, bytes, std::strerror(error));
  }
  return std::unique_ptr<ShmRegion>(new ShmRegion(name, data, bytes, /*owner=*/true));
}

StatusOr<std::unique_ptr<ShmRegion>> ShmRegion::Open(const std::string& name,
                                                     std::string_view field) {
  EPD_RETURN_IF_ERROR(ValidateShmName(name, field));
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    return NotFoundError("{} = '{}' cannot be opened: {}", field, name, std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    close(fd);
    return InvalidArgumentError("{} = '{}' is empty", field, name);
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int error = errno;
  close(fd);
  if (data == MAP_FAILED) {
    return InvalidArgumentError("{} = '{}' cannot be mapped: {}", field, name,
                                std::strerror(error));
  }
  return std::unique_ptr<ShmRegion>(new ShmRegion(name, data, size, /*owner=*/false));
}

ShmRegion::~ShmRegion() {
  if (munmap(data_, size_) != 0) {
    EPD_LOG(kCpu, warn, "munmap('{}') failed: {}", name_, std::strerror(errno));
  }
  if (owner_ && shm_unlink(name_.c_str()) != 0) {
    EPD_LOG(kCpu, warn, "shm_unlink('{}') failed: {}", name_, std::strerror(errno));
  }
}

}  // namespace epd
