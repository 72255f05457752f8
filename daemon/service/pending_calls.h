// PendingUnaryCalls: unary calls whose reactor waits for the engine: ops (UpdateHandle,
// Dispatch, Combine) until their completion, control calls (groups, handles, buffers,
// fences, CloseSession) until the engine's control worker answered. Each is finished exactly once: by that completion, or by
// FinishAll() at shutdown when the engine still holds the op past its drain timeout (a
// callback server cannot stop until every call is finished).
#pragma once

#include <grpcpp/support/server_callback.h>

#include <functional>
#include <memory>
#include <mutex>
#include <unordered_set>

namespace epd::service {

class PendingUnaryCalls {
 public:
  struct Call;
  using CallPtr = std::shared_ptr<Call>;

  CallPtr Add(grpc::ServerUnaryReactor* reactor);
  // Finishes `call` with `status` unless it was finished already; never touches it after.
  // `fill` (may be empty) writes the response first, only when this call finishes it.
  void Finish(const CallPtr& call, const grpc::Status& status,
              const std::function<void()>& fill = {});
  void FinishAll(const grpc::Status& status);

 private:
  std::mutex mu_;
  std::unordered_set<CallPtr> calls_;
};

struct PendingUnaryCalls::Call {
  explicit Call(grpc::ServerUnaryReactor* r) : reactor(r) {}
  grpc::ServerUnaryReactor* const reactor;
  std::mutex mu;
  bool finished = false;
};

}  // namespace epd::service
