#include "client/examples/frontend_memory.h"

#include <cstring>

namespace epd::example {
namespace {

class HostMemory : public FrontendMemory {
 public:
  explicit HostMemory(std::unique_ptr<SharedMemoryBuffer> shm) : shm_(std::move(shm)) {}
  size_t size() const override { return shm_->size(); }
  v1::MemorySource Source() const override { return shm_->Source(); }
  Status Write(size_t offset, const void* src, size_t bytes) override {
    EPD_RETURN_IF_ERROR(Check(offset, bytes));
    if (bytes > 0) std::memcpy(shm_->at<char>(offset), src, bytes);
    return OkStatus();
  }
  Status Read(size_t offset, void* dst, size_t bytes) const override {
    EPD_RETURN_IF_ERROR(Check(offset, bytes));
    if (bytes > 0) std::memcpy(dst, shm_->at<char>(offset), bytes);
    return OkStatus();
  }
  Status Fill(size_t offset, uint8_t value, size_t bytes) override {
    EPD_RETURN_IF_ERROR(Check(offset, bytes));
    std::memset(shm_->at<char>(offset), value, bytes);
    return OkStatus();
  }
  SharedMemoryBuffer* shm() override { return shm_.get(); }

 private:
  // NOTE: callers pass empty vectors' data() (null) with 0 bytes; memcpy may not see null.
  Status Check(size_t offset, size_t bytes) const {
    if (offset + bytes > shm_->size()) {
      return InvalidArgumentError("[{}, {}) is outside '{}' of {} bytes", offset, offset + bytes,
                                  shm_->name(), shm_->size());
    }
    return OkStatus();
  }
  std::unique_ptr<SharedMemoryBuffer> shm_;
};

}  // namespace

StatusOr<std::unique_ptr<FrontendMemory>> CreateHostMemory(size_t bytes) {
  EPD_ASSIGN_OR_RETURN(auto shm, SharedMemoryBuffer::Create(bytes));
  return std::unique_ptr<FrontendMemory>(new HostMemory(std::move(shm)));
}

}  // namespace epd::example
