#include "daemon/backends/cuda/nccl_comms.h"

#include "daemon/backends/cuda/nccl_check.h"
#include "daemon/core/log.h"

namespace epd::cuda {

StatusOr<std::unique_ptr<NcclComms>> NcclComms::Create(const std::vector<int>& devices) {
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  EPD_NCCL_CHECK(ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()));
  return std::unique_ptr<NcclComms>(new NcclComms(std::move(comms)));
}

NcclComms::~NcclComms() {
  for (ncclComm_t comm : comms_) {
    if (comm == nullptr) continue;
    if (ncclResult_t r = ncclCommDestroy(comm); r != ncclSuccess) {
      EPD_LOG(kNccl, warn, "ncclCommDestroy: {}", ncclGetErrorString(r));
    }
  }
}

void LazyNcclComms::Enable(std::vector<int> devices) {
  std::lock_guard lock(mutex_);
  devices_ = std::move(devices);
}

StatusOr<NcclComms*> LazyNcclComms::Get() {
  std::lock_guard lock(mutex_);
  if (comms_ == nullptr) {
    if (devices_.empty()) {
      return FailedPreconditionError("NCCL communicators are off for this group");
    }
    EPD_ASSIGN_OR_RETURN(comms_, NcclComms::Create(devices_));
  }
  return comms_.get();
}

bool LazyNcclComms::created() const {
  std::lock_guard lock(mutex_);
  return comms_ != nullptr;
}

std::string NcclVersionString() {
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "unknown";
  // Since 2.9 the code is major * 10000 + minor * 100 + patch.
  return fmt::format("{}.{}.{}", code / 10000, code / 100 % 100, code % 100);
}

}  // namespace epd::cuda
