// SessionTable: the open sessions, their random ids, and the idle expiry of unary ones.
//
// A Session owns what its frontend registered (buffers, fences, handle attachments) under
// its own mutex, so sessions never contend with each other. The table's lock only guards the
// id map; nothing slow runs under either. Per-session policy checks (who may open a session
// for which rank, how many) belong in Open.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "daemon/core/buffer_registry.h"
#include "daemon/core/engine.h"
#include "daemon/core/handle_state.h"

namespace epd {

struct Fence {
  std::unique_ptr<ExportedMemory> page;
};

struct Session {
  // Set at open, never changed.
  SessionId id = 0;
  // The other half of the session's name: calls naming the session must present it
  // (Engine::Touch with a caller); never listed or logged.
  SessionSecret secret = 0;
  int rank = 0;
  std::string client_name;
  bool unary = false;
  SessionPeer peer;
  Clock::time_point opened;

  std::atomic<bool> closed{false};
  std::atomic<Clock::rep> last_used{0};  // Clock ticks
  std::atomic<uint64_t> ops_completed{0}, ops_failed{0};
  std::atomic<uint64_t> ops_in_flight{0};  // accepted by the pipeline, not yet answered
  // Ops handed to the backend's lane that it has not passed yet (answered or not).
  std::atomic<uint64_t> ops_running{0};

  void Touch() { last_used.store(Clock::now().time_since_epoch().count()); }
  Clock::time_point last_used_at() const {
    return Clock::time_point(Clock::duration(last_used.load()));
  }

  // The session's objects; ids are scoped to the session.
  std::mutex mutex;
  ObjectId next_id = 1;
  BufferRegistry buffers;
  std::map<ObjectId, std::shared_ptr<Fence>> fences;
  std::map<ObjectId, ObjectId> fence_buffers;  // fence id -> its page's buffer id
  std::map<ObjectId, std::shared_ptr<Handle>> handles;
  std::map<ObjectId, ObjectId> handle_buffers;  // handle id -> exported region's buffer id
  uint64_t registered_buffers = 0;  // RegisterBuffer's, not fence pages or handle regions
  uint64_t registered_bytes = 0;
};

class SessionTable {
 public:
  SessionTable();

  // RESOURCE_EXHAUSTED naming limits.sessions when `max_open` sessions are open already.
  StatusOr<std::shared_ptr<Session>> Open(int rank, std::string client_name, bool unary,
                                          SessionPeer peer,
                                          uint64_t max_open = std::numeric_limits<uint64_t>::max());
  // The open session (touched: a call keeps a unary session alive), or NOT_FOUND.
  StatusOr<std::shared_ptr<Session>> Find(SessionId id);
  // Takes the session out of the table and marks it closed; nullptr when it is not open.
  std::shared_ptr<Session> Remove(SessionId id);
  // From now on Open fails with UNAVAILABLE.
  void StopOpening();

  std::vector<SessionId> Ids() const;
  std::vector<std::shared_ptr<Session>> All() const;
  std::vector<SessionId> IdleUnary(Clock::time_point now, Clock::duration timeout) const;
  std::vector<SessionSummary> List() const;
  size_t open() const;
  uint64_t total() const { return total_.load(); }

 private:
  mutable std::mutex mutex_;
  std::map<SessionId, std::shared_ptr<Session>> sessions_;
  bool stopped_ = false;
  std::atomic<uint64_t> total_{0};
};

// Closes unary sessions idle for longer than `timeout`, checking every `period`.
class IdleReaper {
 public:
  IdleReaper(SessionTable& table, Clock::duration timeout, Clock::duration period,
             std::function<void(SessionId)> close);
  ~IdleReaper();  // stops and joins
  IdleReaper(const IdleReaper&) = delete;
  IdleReaper& operator=(const IdleReaper&) = delete;

 private:
  void Run();

  SessionTable& table_;
  const Clock::duration timeout_, period_;
  const std::function<void(SessionId)> close_;
  std::mutex mutex_;
  std::condition_variable stop_changed_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace epd
