#include "client/session_stream.h"

#include <future>

#include "client/rpc_status.h"

namespace epd::internal {

v1::SessionResponse ResponseFor(uint64_t request_id, const Status& status) {
  v1::SessionResponse response;
  response.set_request_id(request_id);
  response.set_code(static_cast<int>(status.code()));
  response.set_message(status.message());
  return response;
}

StatusOr<std::unique_ptr<SessionStream>> SessionStream::Open(std::shared_ptr<v1::Epd::Stub> stub,
                                                             const v1::OpenSessionRequest& open,
                                                             std::chrono::milliseconds timeout,
                                                             v1::OpenSessionResponse* opened) {
  auto stream = std::unique_ptr<SessionStream>(new SessionStream());
  stream->stub_ = std::move(stub);
  stream->stream_ = stream->stub_->Session(&stream->context_);
  stream->reader_ = std::thread([s = stream.get()] { s->ReadLoop(); });

  v1::SessionRequest request;
  *request.mutable_open() = open;
  auto answer = std::make_shared<std::promise<v1::SessionResponse>>();
  std::future<v1::SessionResponse> future = answer->get_future();
  stream->Send(std::move(request),
               [answer](const v1::SessionResponse& response) { answer->set_value(response); });
  if (future.wait_for(timeout) != std::future_status::ready) {
    stream->Close(std::chrono::milliseconds(0)).IgnoreError();  // cancels: we report below
    return DeadlineExceededError("opening a session for rank {}: no answer within {} ms",
                                 open.rank(), timeout.count());
  }
  const v1::SessionResponse response = future.get();
  if (response.code() != 0) {
    return Status(static_cast<StatusCode>(response.code()), response.message());
  }
  if (!response.has_opened()) {
    return InternalError("opening a session for rank {}: the answer carries no session id",
                         open.rank());
  }
  *opened = response.opened();
  return stream;
}

SessionStream::~SessionStream() { Close(std::chrono::milliseconds(10'000)).IgnoreError(); }

void SessionStream::Send(v1::SessionRequest request, Callback done) {
  std::lock_guard<std::mutex> write_lock(write_mu_);
  const uint64_t id = next_request_id_++;
  request.set_request_id(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_ || writes_done_) {
      const Status status =
          ended_ ? end_status_ : FailedPreconditionError("the session stream is closed");
      done(ResponseFor(id, status));
      return;
    }
    pending_.emplace(id, std::move(done));
  }
  // A failed write means the stream broke: the reader sees the end and fails what is pending.
  if (!stream_->Write(request)) return;
}

void SessionStream::ReadLoop() {
  v1::SessionResponse response;
  while (stream_->Read(&response)) {
    Callback done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(response.request_id());
      if (it == pending_.end()) continue;  // not ours (or already failed locally)
      done = std::move(it->second);
      pending_.erase(it);
    }
    done(response);
  }
  Status finish;
  {
    std::lock_guard<std::mutex> write_lock(write_mu_);
    finish = FromGrpcStatus(stream_->Finish());
    finished_ = true;
  }
  std::map<uint64_t, Callback> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    end_status_ = finish.ok() ? FailedPreconditionError("the session stream was closed")
                              : finish.WithContext("the session stream ended");
    if (end_status_.code() == StatusCode::kCancelled) {
      end_status_ = Status(StatusCode::kUnavailable, end_status_.message());
    }
    failed.swap(pending_);
  }
  ended_cv_.notify_all();
  for (auto& [id, done] : failed) done(ResponseFor(id, end_status_));
}

Status SessionStream::Close(std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> write_lock(write_mu_);
    if (!writes_done_ && !finished_) stream_->WritesDone();
    writes_done_ = true;
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!ended_cv_.wait_for(lock, timeout, [this] { return ended_; })) {
      context_.TryCancel();
    }
  }
  if (reader_.joinable()) reader_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return end_status_.code() == StatusCode::kFailedPrecondition ? OkStatus() : end_status_;
}

}  // namespace epd::internal
