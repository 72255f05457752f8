// SessionStream: the reactor of one `Session` bidi stream (epd.proto).
//
// Protocol: the first request must be `open` (else the stream ends FAILED_PRECONDITION);
// then update / dispatch / combine ops, each answered by a SessionResponse with its
// request_id, in the order the requests arrived. Ops are validated and submitted on the
// reactor thread and completed by the engine's workers; nothing here waits for the device.
//
// The stream's session closes when the stream ends (client half-close: "stream ended") or
// breaks (cancel / disconnect: "connection lost"); the engine then releases what it owned.
//
// Lifetime: gRPC holds one reference until OnDone; every op in flight holds another (its
// completion may arrive after the stream is gone). The last reference deletes the reactor.
#pragma once

#include <deque>
#include <mutex>
#include <optional>

#include "daemon/core/engine.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd::service {

class SessionStreamRegistry;

class SessionStream final
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  // `peer`: the connecting process, recorded on the session the stream opens.
  SessionStream(Engine* engine, SessionStreamRegistry* registry, SessionPeer peer);

  // Ends the stream from the server side (daemon shutdown) once queued answers are written.
  void CloseFromServer(const Status& status);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // An answer slot per request, released to the wire in request order.
  struct Slot {
    uint64_t request_id = 0;
    bool ready = false;
    v1::SessionResponse response;
  };

  friend class SessionStreamRegistry;
  struct Actions;

  ~SessionStream() override = default;

  void Handle(const v1::SessionRequest& request);
  void HandleOpen(uint64_t request_id, const v1::OpenSessionRequest& open);
  // Validates and submits one op; answers at once when it fails synchronously.
  template <typename CoreOp, typename ProtoOp, typename Submit>
  void HandleOp(uint64_t request_id, SessionId session, const ProtoOp& op, std::string_view field,
                Submit submit);

  uint64_t AddSlot(uint64_t request_id);  // takes a reference; returns the slot's sequence
  void Answer(uint64_t sequence, const Status& status,
              const v1::OpenSessionResponse* opened = nullptr);
  // Moves ready answers to the write queue and decides the next read / write / finish.
  Actions FlushLocked();
  void Perform(const Actions& actions);
  // Stops reading and finishes with `status` once queued answers are written.
  void EndWith(const Status& status);
  void CloseSession(std::string_view reason);
  void Ref();
  void Unref();

  Engine* const engine_;
  const SessionPeer peer_;
  SessionStreamRegistry* const registry_;

  std::mutex mu_;
  int refs_ = 1;                // gRPC's, released in OnDone
  v1::SessionRequest request_;  // target of the one outstanding read
  std::optional<SessionId> session_;
  bool session_closed_ = false;
  bool reading_ = false;
  bool reads_done_ = false;
  bool read_paused_ = false;  // too many answers pending: stop reading (backpressure)
  bool writing_ = false;
  bool finished_ = false;
  bool cancelled_ = false;
  bool closing_from_server_ = false;  // finish without waiting for unanswered ops
  grpc::Status finish_status_ = grpc::Status::OK;
  uint64_t next_sequence_ = 0;   // sequence of the next slot
  uint64_t first_sequence_ = 0;  // sequence of slots_.front()
  std::deque<Slot> slots_;
  std::deque<v1::SessionResponse> writes_;  // front is in flight; deque keeps it in place
};

// The live streams, so shutdown can end them instead of waiting for a gRPC deadline.
class SessionStreamRegistry {
 public:
  void Add(SessionStream* stream);
  void Remove(SessionStream* stream);
  void CloseAll(const Status& status);

 private:
  std::mutex mu_;
  std::vector<SessionStream*> streams_;
};

}  // namespace epd::service
