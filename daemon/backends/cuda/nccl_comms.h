// NcclComms: one NCCL communicator per group rank over the group's local GPUs
// (ncclCommInitAll: all ranks of a node live in this process), destroyed together.
#pragma once

#include <nccl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

namespace epd::cuda {

class NcclComms {
 public:
  static StatusOr<std::unique_ptr<NcclComms>> Create(const std::vector<int>& devices);
  ~NcclComms();
  NcclComms(const NcclComms&) = delete;
  NcclComms& operator=(const NcclComms&) = delete;

  ncclComm_t at(int group_rank) const { return comms_[group_rank]; }
  int size() const { return static_cast<int>(comms_.size()); }

 private:
  explicit NcclComms(std::vector<ncclComm_t> comms) : comms_(std::move(comms)) {}
  std::vector<ncclComm_t> comms_;
};

// A group's communicators, created by the first Get(): ncclCommInitAll takes about a second,
// and a group that never runs an NCCL collective should not pay it in CreateGroup.
class LazyNcclComms {
 public:
  // Enables creation over `devices` (one per group rank); until then Get() refuses.
  void Enable(std::vector<int> devices);
  // Thread-safe; a failure is returned to this caller and retried by the next.
  StatusOr<NcclComms*> Get();
  bool created() const;

 private:
  mutable std::mutex mutex_;
  std::vector<int> devices_;
  std::unique_ptr<NcclComms> comms_;
};

// "2.28.9" from ncclGetVersion.
std::string NcclVersionString();

}  // namespace epd::cuda
