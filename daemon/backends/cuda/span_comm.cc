#include "daemon/backends/cuda/span_comm.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "common/cuda_check.h"
#include "daemon/backends/cuda/nccl_await.h"
#include "daemon/backends/cuda/nccl_check.h"
#include "daemon/core/log.h"

namespace epd::cuda {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kWatchInterval{2};
// How often the watchdog asks the cluster view about members while an exchange is slow.
constexpr std::chrono::milliseconds kViewInterval{100};

Status Checked(cudaError_t error, const char* expr) {
  return error == cudaSuccess ? OkStatus() : CudaStatus(error, expr, __FILE__, __LINE__);
}

void AbortComms(std::vector<ncclComm_t>& comms, const std::string& group) {
  for (ncclComm_t& comm : comms) {
    if (comm == nullptr) continue;
    if (ncclResult_t r = ncclCommAbort(comm); r != ncclSuccess) {
      EPD_LOG(kNccl, warn, "group '{}': ncclCommAbort: {}", group, ncclGetErrorString(r));
    }
    comm = nullptr;
  }
  comms.clear();
}

}  // namespace

SpanComm::SpanComm(Options options)
    : options_(std::move(options)), rendezvous_(options_.config, *options_.store) {
  watchdog_ = std::thread([this] { Watch(); });
}

SpanComm::~SpanComm() {
  // A formation still running (its waiter gave up) ends early and drops what it made.
  stopping_.store(true);
  bool shut_down = false;  // Stop came first: the daemon is going, not the group
  {
    std::unique_lock lock(comms_mu_);
    shut_down = !stopped_.ok();
    stopped_ = UnavailableError("group '{}' was destroyed", options_.config.name);
  }
  std::shared_future<Status> forming;
  {
    std::lock_guard lock(forming_mu_);
    forming = forming_;
  }
  if (forming.valid()) forming.wait();
  {
    std::lock_guard lock(watch_mu_);
    quit_ = true;
  }
  watch_cv_.notify_all();
  watchdog_.join();
  {
    std::unique_lock lock(comms_mu_);
    AbortComms(comms_, options_.config.name);
  }
  if (!shut_down) {
    std::lock_guard lock(rendezvous_mu_);
    rendezvous_.Retire();
  }
  for (InFlight& item : in_flight_) GiveEvents(item);
  for (auto& [device, events] : spare_events_) {
    for (cudaEvent_t event : events) cudaEventDestroy(event);
  }
}

Status SpanComm::TakeEvents(InFlight& item) {
  EPD_CUDA_CHECK(cudaGetDevice(&item.device));
  {
    std::lock_guard lock(events_mu_);
    std::vector<cudaEvent_t>& spare = spare_events_[item.device];
    if (spare.size() >= 2) {
      item.start = spare.back();
      spare.pop_back();
      item.end = spare.back();
      spare.pop_back();
      return OkStatus();
    }
  }
  EPD_CUDA_CHECK(cudaEventCreateWithFlags(&item.start, cudaEventDisableTiming));
  if (cudaError_t e = cudaEventCreateWithFlags(&item.end, cudaEventDisableTiming);
      e != cudaSuccess) {
    cudaEventDestroy(item.start);
    item.start = nullptr;
    EPD_CUDA_CHECK(e);
  }
  return OkStatus();
}

void SpanComm::GiveEvents(InFlight& item) {
  std::lock_guard lock(events_mu_);
  std::vector<cudaEvent_t>& spare = spare_events_[item.device];
  spare.push_back(item.start);
  spare.push_back(item.end);
  item.start = item.end = nullptr;
}

int64_t SpanComm::generation() const {
  std::shared_lock lock(comms_mu_);
  return generation_;
}

Status SpanComm::Stopped() const {
  std::shared_lock lock(comms_mu_);
  return stopped_;
}

int SpanComm::IndexOf(int group_rank) const {
  auto it = std::find(options_.hosted.begin(), options_.hosted.end(), group_rank);
  return it == options_.hosted.end() ? -1 : static_cast<int>(it - options_.hosted.begin());
}

std::vector<int> SpanComm::BlamedNodes() const {
  const GroupConfig& c = options_.config;
  std::vector<int> others, down;
  const ClusterView view = options_.store->View();
  for (int r = 0; r < c.world_size(); ++r) {
    const int node = c.NodeOf(r);
    if (node == c.span.node || std::find(others.begin(), others.end(), node) != others.end()) {
      continue;
    }
    others.push_back(node);
    if (node < static_cast<int>(view.members.size()) &&
        view.members[node].state != NodeState::kUp) {
      down.push_back(node);
    }
  }
  return down.empty() ? others : down;
}

std::string SpanComm::NodeList(const std::vector<int>& nodes) const {
  return fmt::format("{}", fmt::join(nodes, ", "));
}

bool SpanComm::formed() const {
  std::shared_lock lock(comms_mu_);
  return !comms_.empty();
}

bool SpanComm::StartFormingLocked() {
  if (forming_.valid()) return true;
  auto task = std::make_shared<std::packaged_task<Status()>>([this] {
    Status formed = Form();
    if (!formed.ok()) options_.record->FailedAll(formed);
    std::vector<std::function<void(Status)>> waiters;
    {
      std::lock_guard done(forming_mu_);
      forming_ = {};
      waiters.swap(form_waiters_);
    }
    for (auto& waiter : waiters) waiter(formed);
    return formed;
  });
  forming_ = task->get_future().share();
  if (!forming_thread_.TryPost([task] { (*task)(); })) {
    forming_ = {};
    return false;
  }
  return true;
}

bool SpanComm::FormInBackground(std::function<void(Status)> done) {
  if (!Stopped().ok() || formed()) return false;
  std::lock_guard lock(forming_mu_);
  if (!StartFormingLocked()) return false;
  form_waiters_.push_back(std::move(done));
  return true;
}

Status SpanComm::EnsureFormed() {
  EPD_RETURN_IF_ERROR(Stopped());
  if (formed()) return OkStatus();
  std::shared_future<Status> forming;
  {
    std::lock_guard lock(forming_mu_);
    if (!StartFormingLocked()) {
      return UnavailableError("group '{}': epd is stopping", options_.config.name);
    }
    forming = forming_;
  }
  // NOTE: bounded: the caller must stay within its liveness bound; the formation carries on and
  // the group's next op finds it.
  if (forming.wait_for(options_.timeout) != std::future_status::ready) {
    return UnavailableError(
        "group '{}': its NCCL communicator is still being formed after {} ms; retry the op",
        options_.config.name, options_.timeout.count());
  }
  return forming.get();
}

Status SpanComm::Form() {
  const GroupConfig& c = options_.config;
  {
    std::shared_lock lock(comms_mu_);
    if (!stopped_.ok()) return stopped_;
    if (!comms_.empty()) return OkStatus();  // a formation just before this one succeeded
  }
  EPD_RETURN_IF_ERROR(CheckNoMemberDown(options_.store->View(), c));
  const auto deadline = SteadyClock::now() + options_.timeout;
  EPD_RETURN_IF_ERROR(
      AwaitMembersJoined(*options_.store, c, deadline, [this] { return !Stopped().ok(); }));
  std::lock_guard rendezvous_lock(rendezvous_mu_);
  EPD_ASSIGN_OR_RETURN(const int64_t generation, rendezvous_.NextGeneration());
  ncclUniqueId id;
  if (rendezvous_.hosts_root()) {
    EPD_NCCL_CHECK(ncclGetUniqueId(&id));
    EPD_RETURN_IF_ERROR(
        rendezvous_.Publish(generation, std::string_view(id.internal, sizeof(id.internal))));
  } else {
    auto fetched = rendezvous_.Fetch(generation, deadline, [this] { return !Stopped().ok(); });
    if (!fetched.ok()) {
      if (fetched.status().code() != StatusCode::kFailedPrecondition) rendezvous_.Break(generation);
      return fetched.status();
    }
    if (fetched->size() != sizeof(id.internal)) {
      return InternalError("group '{}': the stored NCCL unique id has {} bytes, expected {}",
                           c.name, fetched->size(), sizeof(id.internal));
    }
    std::memcpy(id.internal, fetched->data(), sizeof(id.internal));
  }
  EPD_LOG(kNccl, info,
          "group '{}': forming the NCCL communicator of generation {} ({} ranks, {} "
          "here)",
          c.name, generation, c.world_size(), options_.hosted.size());
  std::vector<ncclComm_t> comms(options_.hosted.size(), nullptr);
  Status started;
  EPD_NCCL_CHECK(ncclGroupStart());
  for (size_t i = 0; i < comms.size() && started.ok(); ++i) {
    if (cudaError_t e = cudaSetDevice(options_.devices[i]); e != cudaSuccess) {
      started = InternalError("cudaSetDevice({}): {}", options_.devices[i], cudaGetErrorString(e));
      break;
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // so that a peer that never comes cannot hold this thread
    const ncclResult_t r =
        ncclCommInitRankConfig(&comms[i], c.world_size(), id, options_.hosted[i], &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      started = NcclStatus(r, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
  }
  const ncclResult_t ended = ncclGroupEnd();
  if (started.ok() && ended != ncclSuccess && ended != ncclInProgress) {
    started = NcclStatus(ended, "ncclGroupEnd", __FILE__, __LINE__);
  }
  std::vector<ncclComm_t> live;
  for (ncclComm_t comm : comms) {
    if (comm != nullptr) live.push_back(comm);
  }
  if (started.ok()) {
    started = AwaitComms(
        live, deadline, [this] { return Stopped(); },
        fmt::format("group '{}': ncclCommInitRankConfig", c.name));
  }
  if (started.ok()) {  // before any op of the group waits on a fence (nccl_await.h says why)
    started = WarmUpExchange(
        live, options_.hosted, options_.devices, c.world_size(), deadline,
        [this] { return Stopped(); }, fmt::format("group '{}': the warm-up exchange", c.name));
  }
  if (!started.ok()) {
    AbortComms(live, c.name);
    rendezvous_.Break(generation);
    return UnavailableError(
        "group '{}': forming the NCCL communicator (generation {}) with node {} failed: {}; the "
        "group re-forms at its next op",
        c.name, generation, NodeList(BlamedNodes()), started.message());
  }
  if (Status marked = rendezvous_.MarkFormed(generation); !marked.ok()) {
    AbortComms(live, c.name);
    rendezvous_.Break(generation);
    return marked.WithContext(fmt::format("group '{}'", c.name));
  }
  {
    std::unique_lock lock(comms_mu_);
    if (!stopped_.ok()) {
      AbortComms(live, c.name);
      return stopped_;
    }
    comms_ = std::move(comms);
    generation_ = generation;
  }
  options_.record->FormedAll(generation);
  EPD_LOG(kNccl, info, "group '{}': NCCL communicator of generation {} formed", c.name, generation);
  return OkStatus();
}

StatusOr<int64_t> SpanComm::Exchange(int group_rank, cudaStream_t stream, const char* send,
                                     char* recv, const ExchangeSizes& sizes, std::string_view what,
                                     int64_t generation) {
  const GroupConfig& c = options_.config;
  const int64_t wanted = generation;
  if (wanted < 0) EPD_RETURN_IF_ERROR(EnsureFormed());
  const int index = IndexOf(group_rank);
  if (index < 0) {
    return InternalError("group '{}': group rank {} is not hosted here", c.name, group_rank);
  }
  InFlight item;
  item.what = std::string(what);
  EPD_RETURN_IF_ERROR(TakeEvents(item));
  Status status;
  generation = -1;
  {
    std::shared_lock lock(comms_mu_);
    if (!stopped_.ok()) {
      status = stopped_;
    } else if (comms_.empty() || (wanted >= 0 && wanted != generation_)) {
      status = UnavailableError("group '{}': the communicator was aborted; retry the op", c.name);
    }
    if (!status.ok()) {
      GiveEvents(item);
      return status;
    }
    ncclComm_t comm = comms_[index];
    generation = generation_;
    item.generation = generation;
    status = Checked(cudaEventRecord(item.start, stream), "cudaEventRecord(start)");
    if (status.ok()) {
      const ncclResult_t r =
          EnqueueExchange({{comm, group_rank, send, recv, stream}}, c.world_size(), sizes);
      if (r != ncclSuccess) {
        status = UnavailableError("group '{}': {}: enqueueing the NCCL exchange: {}", c.name, what,
                                  ncclGetErrorString(r));
      } else {
        status = AwaitComms(
            {comm}, SteadyClock::now() + options_.timeout,
            [this] {
              return stopping_.load() ? UnavailableError("epd is shutting down") : OkStatus();
            },
            fmt::format("group '{}': {}: enqueueing the NCCL exchange", c.name, what));
      }
    }
    if (status.ok()) {
      status = Checked(cudaEventRecord(item.end, stream), "cudaEventRecord(end)");
    }
  }
  if (!status.ok()) {
    GiveEvents(item);
    if (status.code() == StatusCode::kUnavailable) {
      // A shutdown is nobody's transport failure; any other names the peers, as the watchdog's
      // failures do (NCCL itself may notice a dead peer first, while enqueueing).
      const std::vector<int> nodes = stopping_.load() ? std::vector<int>{} : BlamedNodes();
      if (!nodes.empty()) {
        status = UnavailableError("{} (the NCCL exchange with node {} failed)", status.message(),
                                  NodeList(nodes));
      }
      Fail(generation, status, nodes);
    }
    return status;
  }
  {
    std::lock_guard lock(watch_mu_);
    in_flight_.push_back(std::move(item));
  }
  watch_cv_.notify_all();
  for (int p = 0; p < c.world_size(); ++p) {
    if (p == group_rank) continue;
    options_.store->ReportTransportBytes(c.NodeOf(p), static_cast<uint64_t>(sizes.send[p]),
                                         static_cast<uint64_t>(sizes.recv[p]));
  }
  return generation;
}

void SpanComm::Fail(int64_t generation, const Status& reason, const std::vector<int>& nodes) {
  const GroupConfig& c = options_.config;
  std::unique_lock lock(comms_mu_);
  if (generation < 0 || generation != generation_ || comms_.empty()) return;
  EPD_LOG(kNccl, warn, "group '{}': aborting the NCCL communicator of generation {}: {}", c.name,
          generation, reason.message());
  // NOTE: before the abort: the ops' kernels after the exchange read the group's abort word once
  // the NCCL kernels end, and must find it raised with this reason.
  if (options_.on_failure) options_.on_failure(reason);
  options_.record->FailedAll(reason);
  AbortComms(comms_, c.name);
  generation_ = -1;
  lock.unlock();
  {
    std::lock_guard rendezvous_lock(rendezvous_mu_);
    rendezvous_.Break(generation);
  }
  for (int node : nodes) options_.store->ReportTransportFailure(node);
}

void SpanComm::AbortInFlight(const Status& reason) {
  bool busy = false;
  {
    std::lock_guard lock(watch_mu_);
    for (const InFlight& item : in_flight_) {
      busy = busy || cudaEventQuery(item.end) == cudaErrorNotReady;  // not just not reaped yet
    }
    cudaGetLastError();
  }
  if (busy) Fail(generation(), reason, {});
}

void SpanComm::Stop(const Status& reason) {
  stopping_.store(true);
  {
    std::unique_lock lock(comms_mu_);
    stopped_ = reason;
  }
  Fail(generation(), reason, {});
}

void SpanComm::Watch() {
  const GroupConfig& c = options_.config;
  auto last_view = SteadyClock::now();
  std::unique_lock lock(watch_mu_);
  while (!quit_) {
    if (in_flight_.empty()) {
      watch_cv_.wait(lock, [this] { return quit_ || !in_flight_.empty(); });
      continue;
    }
    watch_cv_.wait_for(lock, kWatchInterval);
    const auto now = SteadyClock::now();
    const int64_t live = generation();
    std::optional<Status> failure;
    int64_t failed_generation = -1;
    bool slow = false;
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      if (cudaEventQuery(it->end) != cudaErrorNotReady) {  // done (or the context is gone)
        cudaGetLastError();
        GiveEvents(*it);
        it = in_flight_.erase(it);
        continue;
      }
      if (!it->started && cudaEventQuery(it->start) != cudaErrorNotReady) {
        cudaGetLastError();
        it->started = true;
        it->started_at = now;
      }
      if (it->started && it->generation == live && !failure.has_value()) {
        const auto waited = now - it->started_at;
        slow = slow || waited > kViewInterval;
        if (waited > options_.timeout) {
          failed_generation = it->generation;
          failure = OkStatus();  // OK: the timeout; the reason is built below
        }
      }
      ++it;
    }
    if (!failure.has_value() && live >= 0) {
      std::shared_lock comms_lock(comms_mu_);
      for (ncclComm_t comm : comms_) {
        ncclResult_t state = ncclSuccess;
        if (ncclCommGetAsyncError(comm, &state) == ncclSuccess && state != ncclSuccess &&
            state != ncclInProgress) {
          failed_generation = live;
          failure = InternalError("NCCL reported {}", ncclGetErrorString(state));
          break;
        }
      }
    }
    std::vector<int> nodes;
    bool member_down = false;
    if (!failure.has_value() && slow && now - last_view > kViewInterval) {
      last_view = now;
      lock.unlock();
      nodes = BlamedNodes();
      const ClusterView view = options_.store->View();
      for (int node : nodes) {
        member_down = member_down || (node < static_cast<int>(view.members.size()) &&
                                      view.members[node].state != NodeState::kUp);
      }
      lock.lock();
      if (member_down) failed_generation = live;
    }
    if (!failure.has_value() && !member_down) continue;
    lock.unlock();
    if (nodes.empty()) nodes = BlamedNodes();
    std::string why;
    if (member_down) {
      why = "the cluster sees it down";
    } else if (failure->ok()) {
      why = fmt::format("the exchange did not finish within {} ms", options_.timeout.count());
    } else {
      why = std::string(failure->message());
    }
    Fail(failed_generation,
         UnavailableError("group '{}': the NCCL exchange with node {} failed ({}); the "
                          "communicator was aborted and the group re-forms at its next op once "
                          "every node is back",
                          c.name, NodeList(nodes), why),
         nodes);
    lock.lock();
  }
}

}  // namespace epd::cuda
