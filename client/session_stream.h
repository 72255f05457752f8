// Private: the bidirectional Session stream of one session. Requests get increasing ids and
// are written in id order; a reader thread matches each answer to its pending callback. When
// the stream ends (closed, daemon gone) every pending and later request is answered with the
// stream's end status, so no caller waits forever.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "common/status.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd::internal {

class SessionStream {
 public:
  using Callback = std::function<void(const v1::SessionResponse&)>;

  // Starts the stream and sends `open`; returns once the daemon answered (or `timeout`).
  static StatusOr<std::unique_ptr<SessionStream>> Open(std::shared_ptr<v1::Epd::Stub> stub,
                                                       const v1::OpenSessionRequest& open,
                                                       std::chrono::milliseconds timeout,
                                                       v1::OpenSessionResponse* opened);
  ~SessionStream();

  // Sends `request` (its request_id is assigned here); `done` runs exactly once, on the
  // reader thread or inline when the stream already ended.
  void Send(v1::SessionRequest request, Callback done);

  // Half-closes the stream (the daemon ends the session after in-flight ops drain) and waits
  // up to `timeout` for the daemon to finish it, then cancels. Returns the stream's status.
  Status Close(std::chrono::milliseconds timeout);

 private:
  SessionStream() = default;
  void ReadLoop();

  std::shared_ptr<v1::Epd::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;

  std::mutex write_mu_;  // orders writes, WritesDone and Finish on the stream
  uint64_t next_request_id_ = 1;
  bool writes_done_ = false;
  bool finished_ = false;

  std::mutex mu_;  // guards pending_, ended_, end_status_
  std::condition_variable ended_cv_;
  std::map<uint64_t, Callback> pending_;
  bool ended_ = false;
  Status end_status_;

  std::thread reader_;
};

// An answer carrying `status` for `request_id` (used for local failures).
v1::SessionResponse ResponseFor(uint64_t request_id, const Status& status);

}  // namespace epd::internal
