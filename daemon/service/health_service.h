// The standard gRPC health service (grpc.health.v1.Health), built from the compiled
// health.proto so that server reflection can describe it.
//
// Known services: "" (the whole daemon) and "epd.v1.Epd". Both report SERVING until
// SetServing(false) (the daemon is draining), then NOT_SERVING. Watch streams the status and
// every change until the client leaves or Shutdown() ends the stream.
#pragma once

#include <mutex>
#include <set>

#include "grpc/health/v1/health.grpc.pb.h"

namespace epd::service {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  HealthService() = default;
  ~HealthService() override;

  void SetServing(bool serving);
  // Finishes every Watch stream so the server can shut down without waiting for a deadline.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  class Watcher;  // one Watch stream

 private:
  friend class Watcher;
  static bool IsKnownService(const std::string& service);
  ServingStatus status();
  void Unregister(Watcher* watcher);
  // Calls `visit` on every live watcher without holding mu_ (gRPC may run a reaction inline
  // from StartWrite / Finish, and OnDone takes mu_); references keep each one alive.
  template <typename Visit>
  void ForEachWatcher(Visit visit);

  std::mutex mu_;
  ServingStatus status_ = grpc::health::v1::HealthCheckResponse::SERVING;
  bool shut_down_ = false;
  std::set<Watcher*> watchers_;
};

}  // namespace epd::service
