// Private: what the opaque C handles of epd_c.h hold, and the helpers every C entry point uses.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "client/c_api/epd_c.h"
#include "client/epd/client.h"
#include "common/status.h"

namespace epd::c_api {

// Records `status` as the calling thread's last error and returns its code (EPD_OK: nothing).
epd_status_t Report(const Status& status);
// INVALID_ARGUMENT naming a NULL argument.
epd_status_t NullArgument(const char* function, const char* argument);

// Collects the answers of fenced ops in the background (they come in posting order), keeps the
// first error for the caller, and writes a failed op's signal value so no stream waits forever.
class OpReaper {
 public:
  // `release_fence(fence_id, value)` writes the signal of a failed op.
  OpReaper(std::chrono::milliseconds op_timeout,
           std::function<void(uint64_t fence_id, uint64_t value)> release_fence);
  ~OpReaper();  // joins; the session's stream must have ended (every future is ready) or be live

  void Add(std::future<Status> answer, std::string what, uint64_t signal_fence_id,
           uint64_t signal_value);
  // First unreported error (then cleared), OkStatus() when none.
  Status TakeError();
  // Waits until every added answer arrived, at most `timeout`.
  Status Drain(std::chrono::milliseconds timeout);

 private:
  struct Pending {
    std::future<Status> answer;
    std::string what;
    uint64_t signal_fence_id;
    uint64_t signal_value;
  };
  void Run();

  const std::chrono::milliseconds op_timeout_;
  std::function<void(uint64_t, uint64_t)> release_fence_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<Pending> pending_;
  bool busy_ = false;  // the reaper holds an entry outside pending_
  bool stop_ = false;
  Status first_error_;
  std::thread thread_;
};

// Hands fenced ops to the session's stream on a thread of its own, in call order, so the
// caller's cost of posting one is a queue push (the gRPC write happens here), and so CUDA host
// functions (stream ops) never block on the network. Each posted op's answer goes to `reaper`.
class OpPoster {
 public:
  OpPoster(Session& session, OpReaper& reaper);
  ~OpPoster();  // posts everything queued, then joins

  void Enqueue(v1::SessionRequest request, const char* what, uint64_t signal_fence_id,
               uint64_t signal_value);
  // Waits until every queued op is on the stream, at most `timeout`.
  Status Flush(std::chrono::milliseconds timeout);

 private:
  struct Queued {
    v1::SessionRequest request;
    const char* what;
    uint64_t signal_fence_id;
    uint64_t signal_value;
  };
  void Run();

  Session& session_;
  OpReaper& reaper_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<Queued> queue_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

// Posts `request` (any op) on the session's stream.
std::future<Status> PostOp(Session& session, v1::SessionRequest request);

// A frontend-launched handle's mapped data plane and kernel launcher (frontend_path.cc in CUDA
// builds; no_cuda.cc otherwise, where nothing creates one).
struct FrontendPath;
void DestroyFrontendPath(FrontendPath* path);
struct FrontendPathDeleter {
  void operator()(FrontendPath* path) const { DestroyFrontendPath(path); }
};
using FrontendPathPtr = std::unique_ptr<FrontendPath, FrontendPathDeleter>;

}  // namespace epd::c_api

struct epd_client {
  std::unique_ptr<epd::Client> client;
};

struct epd_session {
  std::unique_ptr<epd::Session> session;
  epd::ClientOptions options;
  epd::v1::NodeInfo node;  // at open: what EPD_DATA_PATH_DEFAULT decides from
  std::mutex fences_mu;  // guards fences (the reaper looks fences up)
  std::map<uint64_t, epd::Fence*> fences;
  std::unique_ptr<epd::c_api::OpReaper> reaper;
  std::unique_ptr<epd::c_api::OpPoster> poster;  // declared last: flushed and joined first
};

struct epd_shm {
  std::unique_ptr<epd::SharedMemoryBuffer> buffer;
};

struct epd_fence {
  epd_session* session = nullptr;
  std::unique_ptr<epd::Fence> fence;
};

struct epd_handle {
  epd_session* session = nullptr;
  int32_t data_path = EPD_DATA_PATH_DAEMON_STREAMS;
  std::unique_ptr<epd::HandleView> view;
  epd::c_api::FrontendPathPtr frontend;  // set when data_path is FRONTEND_LAUNCHED
};

struct epd_stream_op {
  epd_session* session = nullptr;
  epd::v1::SessionRequest request;  // the op with its fences; session id filled in
  const char* what = "";
  epd_fence* fence_in = nullptr;
  epd_fence* fence_out = nullptr;
  std::atomic<uint64_t> posts{0};
};

namespace epd::c_api {

// CUDA pieces (cuda_support.cc; no_cuda.cc answers UNIMPLEMENTED in builds without CUDA).
StatusOr<v1::MemorySource> ExportDevice(const void* ptr, uint64_t size_bytes);
Status DeviceAllocation(const void* ptr, uint64_t* base, uint64_t* size_bytes, int32_t* device);
Status SignalOnStream(const Fence& fence, uint64_t value, void* stream);
Status WaitOnStream(const Fence& fence, uint64_t value, void* stream);
// Writes a failed op's signal value into a device fence (CUDA builds; UNIMPLEMENTED otherwise).
Status ReleaseDeviceFence(const Fence& fence, uint64_t value);
// Posts `op` from a host function on `stream`, then the fence stream ops (stream op contract).
Status EnqueueStreamOp(epd_stream_op* op, void* stream);
// Body of the host function: posts one op and hands its answer to the reaper.
void PostStreamOp(epd_stream_op* op);

// Frontend-launched data path (frontend_path.cc; UNIMPLEMENTED / false without CUDA).
bool ClientHasCuda();
// Attaches the data plane of `view`'s handle (waiting up to `timeout` for the group's other
// ranks to create theirs) and maps it on the handle's GPU.
StatusOr<FrontendPathPtr> OpenFrontendPath(Session& session, const HandleView& view,
                                           std::chrono::milliseconds timeout);
Status FrontendUpdate(FrontendPath& path, const void* topk_idx, bool idx_int64,
                      const float* weights, int num_tokens, void* stream);
Status FrontendDispatch(FrontendPath& path, const void* x, void* stream);
Status FrontendCombine(FrontendPath& path, void* out, void* stream);
Status FrontendTakeErrors(FrontendPath& path);

}  // namespace epd::c_api
