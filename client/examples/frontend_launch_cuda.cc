// frontend_launch.h in CUDA builds: FrontendOps on a stream of the rank's process, launched
// directly or captured in CUDA graphs and replayed.
#include <cuda_runtime_api.h>

#include <thread>

#include "client/epd/frontend_ops.h"
#include "client/examples/frontend_launch.h"

namespace epd::example {
namespace {

class CudaFrontendLaunch : public FrontendLaunch {
 public:
  CudaFrontendLaunch(Session& session, uint64_t handle_id, std::unique_ptr<FrontendOps> ops,
                     cudaStream_t stream, char* base, LaunchTensors tensors,
                     std::chrono::milliseconds timeout)
      : session_(session),
        handle_id_(handle_id),
        ops_(std::move(ops)),
        stream_(stream),
        base_(base),
        tensors_(tensors),
        timeout_(timeout) {}
  ~CudaFrontendLaunch() override {
    DropGraphs();
    cudaStreamDestroy(stream_);
  }

  Status RunLayer(int n, const std::function<Status()>& experts) override {
    // With graphs the first layer still runs eagerly: the graphs then continue the device
    // op numbering that eager launches advanced, as an application's warm-up layer would.
    if (!tensors_.graphs || eager_layers_++ == 0) {
      EPD_RETURN_IF_ERROR(LaunchUpdateDispatch(n));
      EPD_RETURN_IF_ERROR(Drain().WithContext("update + dispatch"));
      EPD_RETURN_IF_ERROR(experts());
      EPD_RETURN_IF_ERROR(LaunchCombine());
      return Drain().WithContext("combine");
    }
    // A graph's token count is fixed: a layer of another n captures anew.
    const bool replay = dispatch_graph_ != nullptr && graph_tokens_ == n;
    if (!replay) {
      DropGraphs();
      EPD_RETURN_IF_ERROR(Capture([&] { return LaunchUpdateDispatch(n); }, &dispatch_graph_));
      graph_tokens_ = n;
    }
    EPD_RETURN_IF_ERROR(Launch(dispatch_graph_).WithContext("update + dispatch graph"));
    EPD_RETURN_IF_ERROR(Drain().WithContext("update + dispatch graph"));
    EPD_RETURN_IF_ERROR(experts());
    if (combine_graph_ == nullptr) {
      EPD_RETURN_IF_ERROR(Capture([&] { return LaunchCombine(); }, &combine_graph_));
    }
    EPD_RETURN_IF_ERROR(Launch(combine_graph_).WithContext("combine graph"));
    EPD_RETURN_IF_ERROR(Drain().WithContext("combine graph"));
    if (replay) ++replayed_layers_;
    return OkStatus();
  }

  int replayed_layers() const override { return replayed_layers_; }

 private:
  Status LaunchUpdateDispatch(int n) {
    EPD_RETURN_IF_ERROR(ops_->Update(base_ + tensors_.topk, tensors_.int64_topk,
                                     reinterpret_cast<const float*>(base_ + tensors_.weights), n,
                                     stream_)
                            .WithContext("update"));
    return ops_->Dispatch(base_ + tensors_.x, stream_).WithContext("dispatch");
  }
  Status LaunchCombine() {
    return ops_->Combine(base_ + tensors_.out, stream_).WithContext("combine");
  }

  // Captures what `launch` puts on the stream into an instantiated graph.
  Status Capture(const std::function<Status()>& launch, cudaGraphExec_t* exec) {
    if (cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
        e != cudaSuccess) {
      return InternalError("cudaStreamBeginCapture: {}", cudaGetErrorString(e));
    }
    Status launched = launch();
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    EPD_RETURN_IF_ERROR(launched.WithContext("capturing"));
    if (ended != cudaSuccess) {
      return InternalError("cudaStreamEndCapture: {}", cudaGetErrorString(ended));
    }
    const cudaError_t made = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
      *exec = nullptr;
      return InternalError("cudaGraphInstantiate: {}", cudaGetErrorString(made));
    }
    return OkStatus();
  }
  Status Launch(cudaGraphExec_t exec) {
    if (cudaError_t e = cudaGraphLaunch(exec, stream_); e != cudaSuccess) {
      return InternalError("cudaGraphLaunch: {}", cudaGetErrorString(e));
    }
    return OkStatus();
  }
  void DropGraphs() {
    for (cudaGraphExec_t* exec : {&dispatch_graph_, &combine_graph_}) {
      if (*exec != nullptr) cudaGraphExecDestroy(*exec);
      *exec = nullptr;
    }
  }

  // Waits (bounded, polling) for the stream, then reports what the kernels recorded.
  Status Drain() {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (true) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) {
        return InternalError("cudaStreamQuery: {}", cudaGetErrorString(state));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return DeadlineExceededError("the stream did not finish within {} ms", timeout_.count());
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    Status recorded = ops_->TakeErrors();
    if (ops_->failed_epoch() != 0) {
      // A peer timed out: the ranks restart numbering together (best effort; the error
      // below is what the caller needs to see).
      session_.AttachDataPlane(handle_id_, ops_->failed_epoch()).status().IgnoreError();
    }
    return recorded;
  }

  Session& session_;
  uint64_t handle_id_;
  std::unique_ptr<FrontendOps> ops_;
  cudaStream_t stream_;
  char* base_;
  LaunchTensors tensors_;
  std::chrono::milliseconds timeout_;
  cudaGraphExec_t dispatch_graph_ = nullptr;  // update + dispatch of graph_tokens_ tokens
  cudaGraphExec_t combine_graph_ = nullptr;
  int graph_tokens_ = 0;
  int eager_layers_ = 0;
  int replayed_layers_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<FrontendLaunch>> CreateFrontendLaunch(Session& session,
                                                               const HandleView& view,
                                                               FrontendMemory& memory,
                                                               LaunchTensors tensors,
                                                               std::chrono::milliseconds timeout) {
  char* base = static_cast<char*>(memory.device_data());
  if (base == nullptr) return InvalidArgumentError("the frontend-launched path needs device memory");
  // Peers create their handles concurrently: attaching needs all of them.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  StatusOr<v1::DataPlaneInfo> info = session.AttachDataPlane(view.handle_id());
  while (!info.ok() && info.status().code() == StatusCode::kFailedPrecondition &&
         info.status().message().find("has no handle yet") != std::string_view::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    info = session.AttachDataPlane(view.handle_id());
  }
  if (!info.ok()) return info.status().WithContext("attaching the data plane");
  EPD_ASSIGN_OR_RETURN(auto ops, FrontendOps::Open(*info, view));
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return InternalError("cudaStreamCreateWithFlags: {}", cudaGetErrorString(e));
  }
  return std::unique_ptr<FrontendLaunch>(
      new CudaFrontendLaunch(session, view.handle_id(), std::move(ops), stream, base, tensors,
                             timeout));
}

}  // namespace epd::example
