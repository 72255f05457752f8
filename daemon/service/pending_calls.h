// PendingUnaryCalls: unary op calls (UpdateHandle, Dispatch, Combine) whose reactor waits for
// the engine's completion. Each is finished exactly once: by that completion, or by
// FinishAll() at shutdown when the engine still holds the op past its drain timeout (a
// callback server cannot stop until every call is finished).
#pragma once

#include <grpcpp/support/server_callback.h>

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
  void Finish(const CallPtr& call, const grpc::Status& status);
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
