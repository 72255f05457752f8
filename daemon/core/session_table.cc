#include "daemon/core/session_table.h"

#include "daemon/core/log.h"
#include "daemon/core/session_identity.h"
#include "daemon/core/session_limits.h"

namespace epd {

SessionTable::SessionTable() = default;

StatusOr<std::shared_ptr<Session>> SessionTable::Open(int rank, std::string client_name, bool unary,
                                                      SessionPeer peer, uint64_t max_open) {
  auto session = std::make_shared<Session>();
  session->rank = rank;
  session->client_name = std::move(client_name);
  session->unary = unary;
  session->peer = peer;
  session->opened = Clock::now();
  session->Touch();
  std::lock_guard lock(mutex_);
  if (stopped_) return UnavailableError("epd is shutting down");
  EPD_RETURN_IF_ERROR(
      CheckLimit(sessions_.size(), 1, max_open, "open sessions", "limits.sessions"));
  do {
    EPD_ASSIGN_OR_RETURN(session->id, RandomSessionId());
  } while (session->id == 0 || sessions_.count(session->id) != 0);
  EPD_ASSIGN_OR_RETURN(session->secret, RandomSessionSecret());
  sessions_[session->id] = session;
  total_.fetch_add(1);
  return session;
}

StatusOr<std::shared_ptr<Session>> SessionTable::Find(SessionId id) {
  std::shared_ptr<Session> session;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) {
      return NotFoundError("session_id = {} is not an open session", id);
    }
    session = it->second;
  }
  session->Touch();
  return session;
}

std::shared_ptr<Session> SessionTable::Remove(SessionId id) {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return nullptr;
  std::shared_ptr<Session> session = std::move(it->second);
  sessions_.erase(it);
  session->closed = true;
  return session;
}

void SessionTable::StopOpening() {
  std::lock_guard lock(mutex_);
  stopped_ = true;
}

std::vector<SessionId> SessionTable::Ids() const {
  std::lock_guard lock(mutex_);
  std::vector<SessionId> out;
  for (const auto& [id, session] : sessions_) out.push_back(id);
  return out;
}

std::vector<std::shared_ptr<Session>> SessionTable::All() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Session>> out;
  for (const auto& [id, session] : sessions_) out.push_back(session);
  return out;
}

std::vector<SessionId> SessionTable::IdleUnary(Clock::time_point now,
                                               Clock::duration timeout) const {
  std::lock_guard lock(mutex_);
  std::vector<SessionId> out;
  for (const auto& [id, session] : sessions_) {
    if (session->unary && now - session->last_used_at() > timeout) out.push_back(id);
  }
  return out;
}

std::vector<SessionSummary> SessionTable::List() const {
  std::lock_guard lock(mutex_);
  std::vector<SessionSummary> out;
  for (const auto& [id, s] : sessions_) {
    SessionSummary summary;
    summary.id = id;
    summary.rank = s->rank;
    summary.client_name = s->client_name;
    summary.unary = s->unary;
    summary.peer = s->peer;
    summary.opened = s->opened;
    summary.ops_completed = s->ops_completed.load();
    summary.ops_failed = s->ops_failed.load();
    summary.ops_in_flight = s->ops_in_flight.load();
    summary.ops_running = s->ops_running.load();
    out.push_back(std::move(summary));
  }
  return out;
}

size_t SessionTable::open() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

IdleReaper::IdleReaper(SessionTable& table, Clock::duration timeout, Clock::duration period,
                       std::function<void(SessionId)> close)
    : table_(table),
      timeout_(timeout),
      period_(period),
      close_(std::move(close)),
      thread_([this] { Run(); }) {}

IdleReaper::~IdleReaper() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  stop_changed_.notify_all();
  thread_.join();
}

void IdleReaper::Run() {
  std::unique_lock lock(mutex_);
  while (!stop_changed_.wait_for(lock, period_, [this] { return stop_; })) {
    lock.unlock();
    for (SessionId id : table_.IdleUnary(Clock::now(), timeout_)) close_(id);
    lock.lock();
  }
}

}  // namespace epd
