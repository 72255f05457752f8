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

std::string NcclVersionString() {
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "unknown";
  // Since 2.9 the code is major * 10000 + minor * 100 + patch.
  return fmt::format("{}.{}.{}", code / 10000, code / 100 % 100, code % 100);
}

}  // namespace epd::cuda
