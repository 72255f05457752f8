#include "daemon/service/pending_calls.h"

#include <vector>

namespace epd::service {

PendingUnaryCalls::CallPtr PendingUnaryCalls::Add(grpc::ServerUnaryReactor* reactor) {
  auto call = std::make_shared<Call>(reactor);
  std::lock_guard lock(mu_);
  calls_.insert(call);
  return call;
}

void PendingUnaryCalls::Finish(const CallPtr& call, const grpc::Status& status,
                               const std::function<void()>& fill) {
  {
    std::lock_guard lock(call->mu);
    if (call->finished) return;
    call->finished = true;
  }
  {
    std::lock_guard lock(mu_);
    calls_.erase(call);
  }
  // Only this thread owns the call now; the response lives until the reactor finishes.
  if (fill && status.ok()) fill();
  // After Finish gRPC may delete the reactor at any time: it is not touched again.
  call->reactor->Finish(status);
}

void PendingUnaryCalls::FinishAll(const grpc::Status& status) {
  std::vector<CallPtr> calls;
  {
    std::lock_guard lock(mu_);
    calls.assign(calls_.begin(), calls_.end());
  }
  for (const auto& call : calls) Finish(call, status);
}

}  // namespace epd::service
