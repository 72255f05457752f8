// SharedMemoryBuffer: an owned or borrowed POSIX shared memory mapping.
//
// Create() makes a new object (shm_open O_CREAT|O_EXCL, ftruncate, mmap), zero-filled, and
// unlinks the name when destroyed: the daemon keeps its own mapping, so registered buffers
// stay valid on its side until released. Open() maps an existing object (e.g. a region the
// daemon exports) and never unlinks it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "client/epd/mapped_region.h"
#include "common/status.h"
#include "epd/v1/types.pb.h"

namespace epd {

class SharedMemoryBuffer : public MappedRegion {
 public:
  // `name` must start with '/'; empty: a unique "/epd-client-<pid>-<n>-<random>".
  static StatusOr<std::unique_ptr<SharedMemoryBuffer>> Create(size_t size_bytes,
                                                              std::string name = "");
  // Maps bytes [offset, offset + size) of an existing object read/write.
  static StatusOr<std::unique_ptr<SharedMemoryBuffer>> Open(const std::string& name, size_t offset,
                                                            size_t size_bytes);
  ~SharedMemoryBuffer() override;
  SharedMemoryBuffer(const SharedMemoryBuffer&) = delete;
  SharedMemoryBuffer& operator=(const SharedMemoryBuffer&) = delete;

  void* data() const override { return data_; }
  size_t size() const override { return size_; }
  bool on_device() const override { return false; }
  const std::string& name() const { return name_; }
  bool owner() const { return owner_; }

  // What RegisterBuffer takes: bytes [offset, offset + size) of this object; size 0 = the rest.
  v1::MemorySource Source(uint64_t offset = 0, uint64_t size = 0) const;

  // Removes the name now (the mapping stays valid). Idempotent; owners only.
  Status Unlink();

 private:
  SharedMemoryBuffer() = default;
  static Status OutOfRange(const std::string& name, size_t offset, size_t size, size_t object_size);

  std::string name_;
  void* mapping_ = nullptr;  // page-aligned start of the mmap
  size_t mapping_bytes_ = 0;
  void* data_ = nullptr;  // mapping_ + (offset within the first page)
  size_t size_ = 0;
  bool owner_ = false;
  bool unlinked_ = false;
};

}  // namespace epd
