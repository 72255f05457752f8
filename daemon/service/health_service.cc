#include "daemon/service/health_service.h"

#include <optional>

namespace epd::service {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. gRPC allows one outstanding write, so a status that changes while a
// write is in flight is kept in `next_` (only the latest matters) and sent from OnWriteDone.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, bool known) : service_(service), known_(known) {}

  // Called with the service's mutex held.
  void Notify(ServingStatus status) {
    std::lock_guard lock(mu_);
    if (!known_ || finished_) return;
    next_ = status;
    MaybeWriteLocked();
  }
  void End() {
    std::lock_guard lock(mu_);
    end_requested_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!ok) end_requested_ = true;  // the client is gone; OnCancel follows
    MaybeWriteLocked();
  }
  void OnCancel() override { End(); }
  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() {
    if (finished_ || writing_) return;
    if (end_requested_) {
      finished_ = true;
      Finish(grpc::Status::OK);
      return;
    }
    if (!next_.has_value() || next_ == last_sent_) return;
    response_.set_status(known_ ? *next_ : HealthCheckResponse::SERVICE_UNKNOWN);
    last_sent_ = next_;
    writing_ = true;
    StartWrite(&response_);
  }

  HealthService* service_;
  const bool known_;
  std::mutex mu_;
  HealthCheckResponse response_;  // must outlive the write in flight
  std::optional<ServingStatus> next_;
  std::optional<ServingStatus> last_sent_;
  bool writing_ = false;
  bool end_requested_ = false;
  bool finished_ = false;

  friend class HealthService;
};

HealthService::~HealthService() { Shutdown(); }

bool HealthService::IsKnownService(const std::string& service) {
  return service.empty() || service == "epd.v1.Epd";
}

void HealthService::SetServing(bool serving) {
  std::lock_guard lock(mu_);
  status_ = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  for (Watcher* watcher : watchers_) watcher->Notify(status_);
}

void HealthService::Shutdown() {
  std::lock_guard lock(mu_);
  shut_down_ = true;
  for (Watcher* watcher : watchers_) watcher->End();
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
  {
    std::lock_guard lock(mu_);
    response->set_status(status_);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  const bool known = IsKnownService(request->service());
  auto* watcher = new Watcher(this, known);
  std::lock_guard lock(mu_);
  watchers_.insert(watcher);
  {
    // The first message: the current status, or SERVICE_UNKNOWN (health.proto's contract).
    std::lock_guard watcher_lock(watcher->mu_);
    watcher->next_ = status_;
    if (!known) watcher->next_ = HealthCheckResponse::SERVICE_UNKNOWN;
    watcher->MaybeWriteLocked();
  }
  if (shut_down_) watcher->End();
  return watcher;
}

}  // namespace epd::service
