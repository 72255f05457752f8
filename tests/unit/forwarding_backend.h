// A Backend that forwards every call to another one: tests derive from it to slow down or
// interpose on one call (a slow CreateGroup, a session closed in the middle of CreateHandle).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <utility>

#include "daemon/core/backend.h"

namespace epd::testing {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  NodeDescription Describe() const override { return inner_->Describe(); }
  int num_ranks() const override { return inner_->num_ranks(); }
  AllocationCounter& allocations() override { return inner_->allocations(); }
  std::chrono::milliseconds op_timeout() const override { return inner_->op_timeout(); }
  StatusOr<std::shared_ptr<Memory>> Import(const MemorySource& s, int r) override {
    return inner_->Import(s, r);
  }
  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int r) override {
    return inner_->CreateFence(r);
  }
  StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& c) override {
    return inner_->CreateGroup(c);
  }
  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& g, int r) override {
    return inner_->CreateHandle(g, r);
  }
  Status WaitFence(BackendHandle& h, ExportedMemory& f, uint64_t v) override {
    return inner_->WaitFence(h, f, v);
  }
  Status SignalFence(BackendHandle& h, ExportedMemory& f, uint64_t v) override {
    return inner_->SignalFence(h, f, v);
  }
  bool FoldsFenceSignals() const override { return inner_->FoldsFenceSignals(); }
  bool PrepareInBackground(BackendHandle& h, CollectiveKind kind,
                           std::function<void(Status)> done) override {
    return inner_->PrepareInBackground(h, kind, std::move(done));
  }
  Status PrepareCollective(BackendHandle& h) override { return inner_->PrepareCollective(h); }
  Status UpdateHandle(BackendHandle& h, const UpdateArgs& a) override {
    return inner_->UpdateHandle(h, a);
  }
  Status Dispatch(BackendHandle& h, const DispatchArgs& a) override {
    return inner_->Dispatch(h, a);
  }
  Status Combine(BackendHandle& h, const CombineArgs& a) override {
    return inner_->Combine(h, a);
  }
  void Abandon(BackendHandle& h, CollectiveKind kind, const Status& reason) override {
    inner_->Abandon(h, kind, reason);
  }
  bool HasDeferred(BackendHandle& h) override { return inner_->HasDeferred(h); }
  Status EnqueueDeferred(BackendHandle& h) override { return inner_->EnqueueDeferred(h); }
  void Complete(BackendHandle& h, std::function<void(Status)> done) override {
    inner_->Complete(h, std::move(done));
  }
  void AbortGroup(BackendGroup& g, const Status& reason) override {
    inner_->AbortGroup(g, reason);
  }
  void BeginShutdown() override { inner_->BeginShutdown(); }
  StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& g, BackendHandle& h) override {
    return inner_->ExportDataPlane(g, h);
  }
  StatusOr<uint64_t> ResetDataPlane(BackendGroup& g, int dead) override {
    return inner_->ResetDataPlane(g, dead);
  }

 private:
  std::unique_ptr<Backend> inner_;
};

// The wrapped backend with a CreateGroup as slow as building an NCCL communicator, counting
// the builds: concurrent creates of one group must share one build and not block callers.
class SlowGroupBackend : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  int group_builds() const { return group_builds_; }

  StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& c) override {
    ++group_builds_;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return ForwardingBackend::CreateGroup(c);
  }

 private:
  std::atomic<int> group_builds_{0};
};

}  // namespace epd::testing
