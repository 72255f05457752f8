#include "daemon/service/session_stream.h"

#include <algorithm>

#include "common/grpc_status.h"
#include "common/session_secret.h"
#include "daemon/core/log.h"
#include "daemon/service/convert.h"

namespace epd::service {
namespace {

// Answers not yet written (ops in flight plus answers queued behind a client that does not
// read) before the stream stops reading requests: bounds a stream's memory.
constexpr size_t kMaxPendingAnswers = 4096;

std::string_view OpName(v1::SessionRequest::OpCase op) {
  switch (op) {
    case v1::SessionRequest::kOpen:
      return "open";
    case v1::SessionRequest::kUpdate:
      return "update";
    case v1::SessionRequest::kDispatch:
      return "dispatch";
    case v1::SessionRequest::kCombine:
      return "combine";
    default:
      return "no op";
  }
}

}  // namespace

// What a locked section decided to do on the stream. gRPC may run a reaction inline from
// StartWrite / Finish, so these calls are made only after the mutex is released.
struct SessionStream::Actions {
  bool read = false;
  const v1::SessionResponse* write = nullptr;
  std::optional<grpc::Status> finish;
};

SessionStream::SessionStream(Engine* engine, SessionStreamRegistry* registry, SessionPeer peer)
    : engine_(engine), peer_(peer), registry_(registry) {
  registry_->Add(this);
  Actions actions;
  {
    std::lock_guard lock(mu_);
    reading_ = true;
    actions.read = true;
  }
  Perform(actions);
}

void SessionStream::Perform(const Actions& actions) {
  if (actions.read) StartRead(&request_);
  if (actions.write != nullptr) StartWrite(actions.write);
  if (actions.finish.has_value()) {
    // Release the session before the client sees its stream end: a frontend that reconnects
    // right after closing must find its persistent handles free and its old id gone.
    CloseSession("stream ended");
    Finish(*actions.finish);
  }
}

void SessionStream::OnReadDone(bool ok) {
  if (!ok) {  // the client half-closed (or the stream broke: OnCancel says so)
    Actions actions;
    {
      std::lock_guard lock(mu_);
      reading_ = false;
      reads_done_ = true;
      actions = FlushLocked();
    }
    Perform(actions);
    return;
  }
  const v1::SessionRequest request = std::move(request_);
  Handle(request);
  Actions actions;
  {
    std::lock_guard lock(mu_);
    reading_ = false;
    if (!reads_done_ && !finished_) {
      if (slots_.size() + writes_.size() >= kMaxPendingAnswers) {
        read_paused_ = true;
      } else {
        reading_ = true;
        actions.read = true;
      }
    }
  }
  Perform(actions);
}

void SessionStream::Handle(const v1::SessionRequest& request) {
  std::optional<SessionId> session;
  {
    std::lock_guard lock(mu_);
    session = session_;
  }
  if (request.op_case() == v1::SessionRequest::kOpen) {
    HandleOpen(request.request_id(), request.open());
    return;
  }
  if (!session.has_value()) {
    EndWith(FailedPreconditionError(
        "the first request of a Session stream must be `open`, not `{}` (request_id {})",
        OpName(request.op_case()), request.request_id()));
    return;
  }
  switch (request.op_case()) {
    case v1::SessionRequest::kUpdate:
      HandleOp<UpdateRequest>(
          request.request_id(), *session, request.update(), "update",
          [this](SessionId s, const UpdateRequest& r, const OpOptions& o, OpDone done) {
            return engine_->SubmitUpdate(s, r, o, std::move(done));
          });
      break;
    case v1::SessionRequest::kDispatch:
      HandleOp<DispatchRequest>(
          request.request_id(), *session, request.dispatch(), "dispatch",
          [this](SessionId s, const DispatchRequest& r, const OpOptions& o, OpDone done) {
            return engine_->SubmitDispatch(s, r, o, std::move(done));
          });
      break;
    case v1::SessionRequest::kCombine:
      HandleOp<CombineRequest>(
          request.request_id(), *session, request.combine(), "combine",
          [this](SessionId s, const CombineRequest& r, const OpOptions& o, OpDone done) {
            return engine_->SubmitCombine(s, r, o, std::move(done));
          });
      break;
    default:
      Answer(AddSlot(request.request_id()),
             InvalidArgumentError("request_id {}: op is not set (open, update, dispatch or "
                                  "combine)",
                                  request.request_id()));
      Unref();
      break;
  }
}

void SessionStream::HandleOpen(uint64_t request_id, const v1::OpenSessionRequest& open) {
  const uint64_t slot = AddSlot(request_id);
  std::optional<SessionId> existing;
  {
    std::lock_guard lock(mu_);
    existing = session_;
  }
  if (existing.has_value()) {
    Answer(slot,
           FailedPreconditionError("the stream's session {} is already open", *existing));
    Unref();
    return;
  }
  auto info = engine_->OpenSession(open.rank(), open.client_name(), /*unary=*/false, peer_);
  if (!info.ok()) {
    EPD_LOG(kRpc, info, "Session stream: open rank={} client='{}' failed: {}", open.rank(),
            open.client_name(), info.status().ToString());
    Answer(slot, info.status());
    Unref();
    EndWith(info.status());  // a stream without a session has nothing more to do
    return;
  }
  {
    std::lock_guard lock(mu_);
    session_ = info->id;
  }
  EPD_LOG(kRpc, debug, "session {} opened on a stream: rank={} client='{}'", info->id,
          info->rank, info->client_name);
  v1::OpenSessionResponse opened;
  opened.set_session_id(info->id);
  opened.set_rank(info->rank);
  // The stream's own ops need no secret (they are bound to the stream); the session's unary
  // calls (buffers, fences, groups, handles) present it.
  opened.set_session_secret(FormatSessionSecret(info->secret));
  Answer(slot, OkStatus(), &opened);
  Unref();
}

template <typename CoreOp, typename ProtoOp, typename Submit>
void SessionStream::HandleOp(uint64_t request_id, SessionId session, const ProtoOp& op,
                             std::string_view field, Submit submit) {
  const uint64_t slot = AddSlot(request_id);  // holds a reference until answered
  CoreOp core;
  OpOptions options;
  Status status = FromProto(op, &core, &options, field);
  if (status.ok() && op.session_id() != 0 && op.session_id() != session) {
    status = InvalidArgumentError("{}.session_id = {} is not this stream's session {}",
                                  field, op.session_id(), session);
  }
  if (status.ok()) {
    status = submit(session, core, options, [this, slot](Status done) {
      Answer(slot, done);
      Unref();
    });
  }
  if (!status.ok()) {  // `done` is never called when the submission fails
    Answer(slot, status);
    Unref();
  }
}

uint64_t SessionStream::AddSlot(uint64_t request_id) {
  std::lock_guard lock(mu_);
  ++refs_;
  slots_.push_back(Slot{request_id, false, {}});
  return next_sequence_++;
}

void SessionStream::Answer(uint64_t sequence, const Status& status,
                           const v1::OpenSessionResponse* opened) {
  Actions actions;
  {
    std::lock_guard lock(mu_);
    Slot& slot = slots_[sequence - first_sequence_];
    slot.ready = true;
    slot.response.set_request_id(slot.request_id);
    slot.response.set_code(static_cast<int>(status.code()));
    slot.response.set_message(AnswerMessage(status.message()));
    if (opened != nullptr) *slot.response.mutable_opened() = *opened;
    actions = FlushLocked();
  }
  Perform(actions);
}

SessionStream::Actions SessionStream::FlushLocked() {
  Actions actions;
  // Answers leave in request order: only the ready prefix moves to the write queue.
  while (!slots_.empty() && slots_.front().ready) {
    if (!finished_ && !cancelled_) writes_.push_back(std::move(slots_.front().response));
    slots_.pop_front();
    ++first_sequence_;
  }
  if (finished_) return actions;
  if (cancelled_) {
    // Nothing more can reach the client; in-flight answers are dropped as they complete.
    if (!writing_) {
      writes_.clear();
      finished_ = true;
      actions.finish = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
    }
    return actions;
  }
  if (read_paused_ && slots_.size() + writes_.size() < kMaxPendingAnswers / 2 && !reads_done_) {
    read_paused_ = false;
    reading_ = true;
    actions.read = true;
  }
  if (!writing_ && !writes_.empty()) {
    writing_ = true;
    actions.write = &writes_.front();
    return actions;
  }
  const bool answered_all = slots_.empty() || closing_from_server_;
  if (!writing_ && writes_.empty() && answered_all && reads_done_) {
    finished_ = true;
    actions.finish = finish_status_;
  }
  return actions;
}

void SessionStream::OnWriteDone(bool ok) {
  Actions actions;
  {
    std::lock_guard lock(mu_);
    writing_ = false;
    writes_.pop_front();
    if (!ok) cancelled_ = true;  // the stream broke; OnCancel follows
    actions = FlushLocked();
  }
  Perform(actions);
}

void SessionStream::EndWith(const Status& status) {
  Actions actions;
  {
    std::lock_guard lock(mu_);
    if (finished_) return;
    finish_status_ = ToGrpcStatus(status);
    reads_done_ = true;
    actions = FlushLocked();
  }
  Perform(actions);
}

void SessionStream::CloseFromServer(const Status& status) {
  {
    std::lock_guard lock(mu_);
    closing_from_server_ = true;
  }
  EndWith(status);
}

void SessionStream::OnCancel() {
  Actions actions;
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    actions = FlushLocked();
  }
  Perform(actions);
  CloseSession("connection lost");
}

void SessionStream::OnDone() {
  bool cancelled;
  {
    std::lock_guard lock(mu_);
    cancelled = cancelled_;
  }
  CloseSession(cancelled ? "connection lost" : "stream ended");
  registry_->Remove(this);
  Unref();
}

void SessionStream::CloseSession(std::string_view reason) {
  SessionId session;
  {
    std::lock_guard lock(mu_);
    if (!session_.has_value() || session_closed_) return;
    session_closed_ = true;
    session = *session_;
  }
  EPD_LOG(kRpc, debug, "session {} closing: {}", session, reason);
  // The session is gone when this returns; its memory is freed on the engine's control
  // worker, not on this reactor thread.
  engine_->CloseSession(session, reason, [session](Status closed) {
    if (!closed.ok()) {
      // Already closed by the engine (idle expiry, shutdown): nothing left to release.
      EPD_LOG(kRpc, debug, "session {}: close: {}", session, closed.ToString());
    }
  });
}

void SessionStream::Ref() {
  std::lock_guard lock(mu_);
  ++refs_;
}

void SessionStream::Unref() {
  bool last;
  {
    std::lock_guard lock(mu_);
    last = --refs_ == 0;
  }
  if (last) delete this;
}

void SessionStreamRegistry::Add(SessionStream* stream) {
  std::lock_guard lock(mu_);
  streams_.push_back(stream);
}

void SessionStreamRegistry::Remove(SessionStream* stream) {
  std::lock_guard lock(mu_);
  streams_.erase(std::remove(streams_.begin(), streams_.end(), stream), streams_.end());
}

void SessionStreamRegistry::CloseAll(const Status& status) {
  std::vector<SessionStream*> streams;
  {
    // A listed stream has not reached OnDone, so it is alive; the reference keeps it so.
    std::lock_guard lock(mu_);
    streams = streams_;
    for (SessionStream* stream : streams) stream->Ref();
  }
  for (SessionStream* stream : streams) {
    stream->CloseFromServer(status);
    stream->Unref();
  }
}

}  // namespace epd::service
