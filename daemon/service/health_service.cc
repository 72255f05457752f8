#include "daemon/service/health_service.h"

#include <optional>
#include <vector>

namespace epd::service {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. gRPC allows one outstanding write, so a status that changes while a
// write is in flight waits in `next_` (only the latest matters) and goes out from
// OnWriteDone. Decisions are made under mu_; the gRPC calls they lead to are made after it
// is released, because gRPC may run OnWriteDone / OnDone inline from them.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, bool known) : service_(service), known_(known) {}

  void Notify() { Send(service_->status(), /*end=*/false); }
  void End() { Send(std::nullopt, /*end=*/true); }

  void OnWriteDone(bool ok) override {
    Action action;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok) end_requested_ = true;  // the client is gone
      action = DecideLocked();
    }
    Perform(action);
  }
  void OnCancel() override { End(); }
  void OnDone() override {
    service_->Unregister(this);
    Unref();
  }

  void Ref() {
    std::lock_guard lock(mu_);
    ++refs_;
  }
  void Unref() {
    bool last;
    {
      std::lock_guard lock(mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

 private:
  enum class Action { kNone, kWrite, kFinish };

  void Send(std::optional<ServingStatus> status, bool end) {
    Action action;
    {
      std::lock_guard lock(mu_);
      if (status.has_value()) next_ = known_ ? *status : HealthCheckResponse::SERVICE_UNKNOWN;
      if (end) end_requested_ = true;
      action = DecideLocked();
    }
    Perform(action);
  }

  Action DecideLocked() {
    if (finished_ || writing_) return Action::kNone;
    if (end_requested_) {
      finished_ = true;
      return Action::kFinish;
    }
    if (!next_.has_value() || next_ == last_sent_) return Action::kNone;
    response_.set_status(*next_);
    last_sent_ = next_;
    writing_ = true;
    return Action::kWrite;
  }

  void Perform(Action action) {
    if (action == Action::kWrite) StartWrite(&response_);  // response_ is stable while writing_
    if (action == Action::kFinish) Finish(grpc::Status::OK);
  }

  HealthService* const service_;
  const bool known_;
  std::mutex mu_;
  int refs_ = 1;  // gRPC's, released in OnDone
  HealthCheckResponse response_;
  std::optional<ServingStatus> next_;
  std::optional<ServingStatus> last_sent_;
  bool writing_ = false;
  bool end_requested_ = false;
  bool finished_ = false;
};

HealthService::~HealthService() { Shutdown(); }

bool HealthService::IsKnownService(const std::string& service) {
  return service.empty() || service == "epd.v1.Epd";
}

HealthService::ServingStatus HealthService::status() {
  std::lock_guard lock(mu_);
  return status_;
}

template <typename Visit>
void HealthService::ForEachWatcher(Visit visit) {
  std::vector<Watcher*> watchers;
  {
    // A registered watcher has not reached OnDone, so it is alive to take a reference.
    std::lock_guard lock(mu_);
    watchers.assign(watchers_.begin(), watchers_.end());
    for (Watcher* watcher : watchers) watcher->Ref();
  }
  for (Watcher* watcher : watchers) {
    visit(watcher);
    watcher->Unref();
  }
}

void HealthService::SetServing(bool serving) {
  {
    std::lock_guard lock(mu_);
    status_ = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  }
  ForEachWatcher([](Watcher* watcher) { watcher->Notify(); });
}

void HealthService::Shutdown() {
  {
    std::lock_guard lock(mu_);
    shut_down_ = true;
  }
  ForEachWatcher([](Watcher* watcher) { watcher->End(); });
}

void HealthService::Unregister(Watcher* watcher) {
  std::lock_guard lock(mu_);
  watchers_.erase(watcher);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!IsKnownService(request->service())) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + request->service() + "'"));
    return reactor;
  }
  response->set_status(status());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this, IsKnownService(request->service()));
  bool shut_down;
  {
    std::lock_guard lock(mu_);
    watchers_.insert(watcher);
    shut_down = shut_down_;
  }
  // The first message: the current status, or SERVICE_UNKNOWN (health.proto's contract).
  // gRPC holds its reference until OnDone, which cannot come before this method returns.
  watcher->Notify();
  if (shut_down) watcher->End();
  return watcher;
}

}  // namespace epd::service
