// SpanComm: the NCCL communicators of the group ranks this daemon hosts in one group that spans
// daemons (cuda backend), and the bounds on everything they do (docs/design.md §9).
//
// - Formation: at the first exchange (and the first after a failure), on the group's own
//   formation thread, never a gRPC thread or a rank worker: the generation and unique id come from
//   SpanRendezvous (the daemon hosting group rank 0 creates the id), then ncclGroupStart /
//   ncclCommInitRankConfig per hosted rank (non-blocking config) / ncclGroupEnd, polled with
//   ncclCommGetAsyncError until op_timeout, then one warm-up exchange (nccl_await.h: NCCL's lazily
//   loaded kernels must not load behind an op's fence-wait kernel); on timeout or error the
//   communicators are aborted and the generation is raised. An op's rank worker starts it in the
//   background and holds the op's lane until it ended (FormInBackground); other callers wait for it
//   (EnsureFormed), which is itself bounded. One thread per group, not one per daemon: a
//   formation waits for its peers, and two daemons that start two groups' formations in
//   opposite orders would each wait for the other's second one until op_timeout.
// - Exchange: one grouped ncclSend/ncclRecv with every other group rank (whole messages, or
//   the sizes the caller read from the headers of an exchange before), enqueued on the rank's
//   lane stream with events around it. A watchdog thread times each
//   exchange from when the stream reaches it; past op_timeout, on an NCCL async error, or when
//   the cluster view shows a member node down, `on_failure` runs (the backend fails the
//   group's ops so far with the reason: UNAVAILABLE naming the node), then every communicator
//   is aborted (ncclCommAbort: in-flight NCCL kernels end) and the generation is raised: the
//   group re-forms at its next op, with a new unique id.
// - Stop (shutdown): aborts what is in flight; every later exchange fails at once.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "daemon/backends/cuda/nccl_await.h"
#include "daemon/backends/cuda/span_rendezvous.h"
#include "daemon/core/cluster.h"
#include "daemon/core/group_config.h"
#include "daemon/core/task_thread.h"
#include "daemon/core/transport_record.h"

namespace epd::cuda {

class SpanComm {
 public:
  struct Options {
    GroupConfig config;
    std::vector<int> hosted;   // group ranks this daemon hosts
    std::vector<int> devices;  // CUDA device of each, in the same order
    std::shared_ptr<ClusterStore> store;
    std::chrono::milliseconds timeout{10'000};
    // Called (watchdog or rank worker thread) before the communicators are aborted, with the
    // reason every op of the group issued so far must fail with.
    std::function<void(const Status&)> on_failure;
    // Told every formation and failure of the hosted ranks' communicators (ListGroups).
    std::shared_ptr<TransportRecord> record;
  };
  explicit SpanComm(Options options);
  // Aborts the communicators (local; never waits for peers). Unless Stop came first (shutdown),
  // the leader then drops the keys of the last generation this daemon formed (one bounded store
  // call, skipped while the leader is shown down).
  ~SpanComm();
  SpanComm(const SpanComm&) = delete;
  SpanComm& operator=(const SpanComm&) = delete;

  // Forms the communicators when there are none; bounded by the timeout.
  Status EnsureFormed();
  // Starts (or joins) forming the communicators when there are none, off the caller's thread:
  // true, and `done` is called once with the outcome (on the formation thread); false when they
  // are formed or the SpanComm stopped (EnsureFormed then answers at once).
  bool FormInBackground(std::function<void(Status)> done);
  bool formed() const;
  // Enqueues on `stream` (current device: the rank's) one grouped exchange of group rank
  // `group_rank`: `sizes` of message p of `send` to every rank p != group_rank and of message p
  // of `recv` from it. Returns the communicator generation it went on. With `generation` >= 0
  // only on that generation (the second exchange of an op): UNAVAILABLE, with nothing formed,
  // when it was aborted since. An error means nothing was enqueued.
  StatusOr<int64_t> Exchange(int group_rank, cudaStream_t stream, const char* send, char* recv,
                             const ExchangeSizes& sizes, std::string_view what,
                             int64_t generation = -1);
  // Aborts the communicators when an exchange is in flight (it would otherwise wait for the
  // watchdog); the group re-forms at its next op.
  void AbortInFlight(const Status& reason);
  // Fails `generation` now if it is still the live one, whatever is in flight: on_failure,
  // abort, raise. For an op that cannot finish its part (its peers would otherwise wait for the
  // watchdog).
  void FailGeneration(int64_t generation, const Status& reason) { Fail(generation, reason, {}); }
  // Shutdown: aborts the communicators; every later formation and exchange fails with `reason`.
  void Stop(const Status& reason);
  int64_t generation() const;

 private:
  struct InFlight {
    int device = -1;  // of its events
    cudaEvent_t start = nullptr, end = nullptr;
    int64_t generation = 0;
    std::string what;
    bool started = false;
    std::chrono::steady_clock::time_point started_at;
  };
  Status Form();
  // Posts a formation unless one runs; false when the formation thread stopped.
  bool StartFormingLocked();
  // Two events on the current device for `item`: spares of earlier exchanges, or new ones.
  Status TakeEvents(InFlight& item);
  void GiveEvents(InFlight& item);
  Status Stopped() const;
  // Fails generation `generation` (no-op when it is not the live one): on_failure, abort, raise.
  void Fail(int64_t generation, const Status& reason, const std::vector<int>& nodes);
  // The member nodes to blame: those the cluster view shows not up, else every other node.
  std::vector<int> BlamedNodes() const;
  std::string NodeList(const std::vector<int>& nodes) const;
  void Watch();
  int IndexOf(int group_rank) const;

  const Options options_;
  std::mutex rendezvous_mu_;
  SpanRendezvous rendezvous_;  // guarded by rendezvous_mu_

  // Exchanges hold it shared while they use the communicators; Fail takes it exclusively.
  mutable std::shared_mutex comms_mu_;
  std::vector<ncclComm_t> comms_;  // by hosted index; empty: none formed
  int64_t generation_ = -1;
  Status stopped_;
  // Set by Stop before it waits for comms_mu_: an exchange polling NCCL under the shared lock
  // gives up at once instead of at its deadline.
  std::atomic<bool> stopping_{false};

  std::mutex forming_mu_;
  std::shared_future<Status> forming_;  // valid while a formation runs
  std::vector<std::function<void(Status)>> form_waiters_;  // told when it ends

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::vector<InFlight> in_flight_;
  bool quit_ = false;

  // Events of finished exchanges by device, for the next ones: creating and destroying two per
  // exchange cost host time on every op.
  std::mutex events_mu_;
  std::map<int, std::vector<cudaEvent_t>> spare_events_;
  // Runs the formations; idle by the end of the destructor's body, which waits for forming_.
  TaskThread forming_thread_{"epd-nccl-form"};
  std::thread watchdog_;  // NOTE: last: started once everything above exists
};

}  // namespace epd::cuda
