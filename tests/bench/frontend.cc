#include "tests/bench/frontend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "client/epd/client.h"
#include "daemon/service/convert.h"
#include "tests/bench/process_util.h"
#if EPD_BENCH_WITH_CUDA
#include <cuda_runtime_api.h>

#include "client/epd/cuda.h"
#include "client/epd/frontend_ops.h"
#include "common/cuda_copy.h"
#include "tests/bench/gpu_util.h"
#endif

namespace epd::bench {
namespace {

using service::ToProto;  // the daemon's own core -> proto translation

using SteadyClock = std::chrono::steady_clock;

double UsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count();
}

std::string OneLine(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

// One frontend's tensors for one case: x [T, H] | topk [T, K] int32 | weights [T, K] | out [T, H]
// in one registered allocation (host shm on the cpu backend, device memory on cuda).
struct Tensors {
  size_t x = 0, topk = 0, weights = 0, out = 0, bytes = 0;
  size_t xq = 0, x_scales = 0, expert_out = 0, recv_rows = 0;  // fp8 cases
  std::unique_ptr<SharedMemoryBuffer> shm;
#if EPD_BENCH_WITH_CUDA
  std::unique_ptr<gpu::DeviceBuffer> device;
#endif
  void* base = nullptr;
  uint64_t buffer_id = 0;
};

class Frontend {
 public:
  Frontend(const FrontendOptions& options, const RunSettings& settings)
      : options_(options), settings_(settings) {}

  Status Init();
  // Runs one case in both daemon modes; errors of the case are written to the result file.
  Status RunCase(const Case& c, bool first);
  Status MeasureControl(uint64_t handle_id, const v1::TensorRef& empty_topk);

  std::ofstream out;

 private:
  int session_rank() const {
    return options_.session_rank >= 0 ? options_.session_rank : options_.rank;
  }
  int device() const { return options_.device >= 0 ? options_.device : options_.rank; }
  // Creates the case's group: one frontend per daemon (a spanning group exists on each).
  bool CreatesGroups() const {
    return options_.spans_nodes ? session_rank() == 0 : options_.rank == 0;
  }
  // Every frontend calls this at the same points; false when any of them failed.
  StatusOr<bool> Barrier(bool ok) { return barrier_->Wait(ok, settings_.op_timeout * 2); }
  Status Setup(const Case& c, Tensors& t, const RankRouting& routing);
  Status TimeFenced(const Case& c, Tensors& t, uint64_t handle_id, const RankRouting& routing,
                    ModeSamples& samples, std::string& check);
  Status TimeBlocking(const Case& c, Tensors& t, uint64_t handle_id, ModeSamples& samples);
  // One blocking layer (update, dispatch, combine), untimed.
  Status TimeFrontendLaunched(const Case& c, Tensors& t, const v1::HandleInfo& handle,
                              const RankRouting& routing, ModeSamples& samples,
                              std::string& check);
  // Copies the combine output of the first iteration to the host and checks it.
  std::string CheckOutput(const Case& c, const Tensors& t, const RankRouting& routing);
  std::future<Status> Post(Op op, const Case& c, const Tensors& t, uint64_t handle_id,
                           const v1::OpOptions& op_options);
  void WriteSamples(const Case& c, const char* mode, const ModeSamples& samples);
  // Spanning groups: the group payload bytes this rank's daemon has sent to every node
  // (GetNodeInfo's cluster view), per rank of that daemon.
  StatusOr<double> WireBytesSentPerRank();
  // Reads the count before a mode (NaN when it cannot: the column stays empty); every frontend
  // then waits for all, so that no op of the mode is counted before the reads. Nothing without
  // spanning groups. An error only when the barrier failed.
  StatusOr<double> WireMark();
  // After a mode (every frontend past its last barrier): "wire <case> <mode> <bytes>", the
  // bytes this rank sent per layer (update + dispatch + combine).
  void WriteWire(const Case& c, const char* mode, double before);

  FrontendOptions options_;
  RunSettings settings_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<ShmBarrier> barrier_;
  std::unique_ptr<Fence> go_, done_;
  bool on_gpu_ = false;
  uint64_t fence_value_ = 0;
#if EPD_BENCH_WITH_CUDA
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu::Gate> gate_;
  std::unique_ptr<gpu::EventPair> events_;
  uint32_t gate_value_ = 0;
#endif
};

Status Frontend::Init() {
  EPD_ASSIGN_OR_RETURN(barrier_, ShmBarrier::Open(options_.barrier_name));
  ClientOptions client_options;
  client_options.op_timeout = settings_.op_timeout;
  EPD_ASSIGN_OR_RETURN(client_, Client::Connect(options_.address, client_options));
  EPD_ASSIGN_OR_RETURN(v1::NodeInfo node, client_->GetNodeInfo());
  on_gpu_ = node.backend() == "cuda";
  if (options_.rank == 0) {
    out << "node " << node.backend() << " " << (node.nccl_version().empty() ? "-" : node.nccl_version())
        << "\n";
    for (const auto& gpu : node.gpus()) out << "device " << OneLine(gpu.name()) << "\n";
  }
  EPD_ASSIGN_OR_RETURN(session_, client_->OpenSession(session_rank(),
                                                      fmt::format("epd-bench-rank{}", options_.rank)));
  EPD_ASSIGN_OR_RETURN(go_, session_->CreateFence());
  EPD_ASSIGN_OR_RETURN(done_, session_->CreateFence());
  if (on_gpu_) {
#if EPD_BENCH_WITH_CUDA
    EPD_BENCH_CUDA(cudaSetDevice(device()));
    EPD_BENCH_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    EPD_ASSIGN_OR_RETURN(gate_, gpu::Gate::Create(gpu::Gate::Kind::kStreamWait));
    EPD_ASSIGN_OR_RETURN(events_, gpu::EventPair::Create(device()));
#else
    return UnimplementedError("the daemon runs the cuda backend but epd-bench was built without CUDA");
#endif
  }
  return OkStatus();
}

Status Frontend::Setup(const Case& c, Tensors& t, const RankRouting& routing) {
  const size_t T = c.max_tokens, K = c.top_k;
  t.x = 0;
  t.topk = AlignUp(T * c.row_bytes());
  t.weights = t.topk + AlignUp(T * K * sizeof(int32_t));
  t.out = t.weights + AlignUp(T * K * sizeof(float));
  t.bytes = t.out + AlignUp(T * c.row_bytes());
  std::vector<char> q, scales;
  if (c.fp8()) {
    // ... | xq [T, H] e4m3 | x_scales [T, H / 128] | expert_out [recv_rows, H] (zeros: the
    // timing of combine does not depend on the values; inproc checks fp8 results).
    const GroupConfig config = c.Config("frontend");
    t.recv_rows = ComputeHandleLayout(config).recv_rows;
    t.xq = t.bytes;
    t.x_scales = t.xq + AlignUp(T * c.hidden);
    t.expert_out = t.x_scales + AlignUp(T * config.scale_row_bytes());
    t.bytes = t.expert_out + AlignUp(t.recv_rows * c.row_bytes());
  }
  std::vector<char> host(t.bytes, 0);
  FillTokens(c, options_.rank, host.data() + t.x);
  if (c.fp8()) {
    QuantizeTokens(c, host.data() + t.x, &q, &scales);
    std::memcpy(host.data() + t.xq, q.data(), static_cast<size_t>(c.tokens) * c.hidden);
    std::memcpy(host.data() + t.x_scales, scales.data(),
                c.tokens * c.Config("frontend").scale_row_bytes());
  }
  std::memcpy(host.data() + t.topk, routing.topk_idx.data(), routing.topk_idx.size() * 4);
  std::memcpy(host.data() + t.weights, routing.weights.data(), routing.weights.size() * 4);
  v1::MemorySource source;
  if (!on_gpu_) {
    EPD_ASSIGN_OR_RETURN(t.shm, SharedMemoryBuffer::Create(t.bytes));
    t.base = t.shm->data();
    std::memcpy(t.base, host.data(), t.bytes);
    source = t.shm->Source();
  } else {
#if EPD_BENCH_WITH_CUDA
    EPD_ASSIGN_OR_RETURN(t.device, gpu::DeviceBuffer::Create(device(), t.bytes));
    t.base = t.device->data();
    EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(t.base, host.data(), t.bytes));  // landed before any op
    EPD_ASSIGN_OR_RETURN(source, epd::cuda::ExportDeviceTensor(t.base, t.bytes));
#endif
  }
  EPD_ASSIGN_OR_RETURN(t.buffer_id, session_->RegisterBuffer(source));
  return OkStatus();
}

std::future<Status> Frontend::Post(Op op, const Case& c, const Tensors& t, uint64_t handle_id,
                                   const v1::OpOptions& op_options) {
  const int n = c.tokens;
  switch (op) {
    case Op::kUpdate: {
      v1::UpdateHandleRequest request;
      request.set_handle_id(handle_id);
      *request.mutable_topk_idx() = MakeTensorRef(t.buffer_id, t.topk, v1::DTYPE_INT32, {n, c.top_k});
      *request.mutable_topk_weights() =
          MakeTensorRef(t.buffer_id, t.weights, v1::DTYPE_FP32, {n, c.top_k});
      *request.mutable_options() = op_options;
      return session_->UpdateAsync(std::move(request));
    }
    case Op::kDispatch: {
      v1::DispatchRequest request;
      request.set_handle_id(handle_id);
      *request.mutable_x() = MakeTensorRef(t.buffer_id, t.x, ToProto(c.dtype), {n, c.hidden});
      if (c.prequantized) {
        const GroupConfig config = c.Config("frontend");
        *request.mutable_x() = MakeTensorRef(t.buffer_id, t.xq, v1::DTYPE_FP8_E4M3, {n, c.hidden});
        *request.mutable_x_scales() = MakeTensorRef(
            t.buffer_id, t.x_scales, ToProto(config.scale_dtype()), {n, config.scale_blocks()});
      }
      *request.mutable_options() = op_options;
      return session_->DispatchAsync(std::move(request));
    }
    case Op::kCombine: {
      v1::CombineRequest request;
      request.set_handle_id(handle_id);
      *request.mutable_out() = MakeTensorRef(t.buffer_id, t.out, ToProto(c.dtype), {n, c.hidden});
      if (c.fp8()) {
        *request.mutable_expert_out() =
            MakeTensorRef(t.buffer_id, t.expert_out, ToProto(c.dtype),
                          {static_cast<int64_t>(t.recv_rows), c.hidden});
      }
      *request.mutable_options() = op_options;
      return session_->CombineAsync(std::move(request));
    }
  }
  std::promise<Status> never;
  never.set_value(InternalError("unknown op"));
  return never.get_future();
}

Status Frontend::TimeFenced(const Case& c, Tensors& t, uint64_t handle_id,
                            const RankRouting& routing, ModeSamples& samples, std::string& check) {
  const int total = settings_.warmup + settings_.iterations;
  for (int it = 0; it < total; ++it) {
    for (int op = 0; op < kNumOps; ++op) {
      const uint64_t value = ++fence_value_;
      const v1::OpOptions op_options = FencedOptions(go_.get(), value, done_.get(), value);
      std::future<Status> answer = Post(static_cast<Op>(op), c, t, handle_id, op_options);
      Status status;
      double us = 0;
      if (on_gpu_) {
#if EPD_BENCH_WITH_CUDA
        // Posted ahead: the answer of a non-blocking op comes once it is queued on the
        // daemon's stream behind its wait on `go`.
        status = session_->Await(answer, OpName(static_cast<Op>(op)));
        ++gate_value_;
        if (status.ok()) status = gpu::Check(cudaSetDevice(device()), "cudaSetDevice");
        if (status.ok()) status = gate_->Arm(stream_, gate_value_);
        if (status.ok()) status = events_->RecordStart(stream_);
        if (status.ok()) status = epd::cuda::SignalFenceOnStream(*go_, value, stream_);
        if (status.ok()) status = epd::cuda::WaitFenceOnStream(*done_, value, stream_);
        if (status.ok()) status = events_->RecordStop(stream_);
        EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(status.ok()));
        gate_->Open(gate_value_);  // always: an armed gate must not hold the stream
        if (!all_ok) return status.ok() ? AbortedError("another frontend failed") : status;
        auto elapsed = events_->ElapsedUs(settings_.op_timeout * 2);
        if (!elapsed.ok()) status = elapsed.status();
        else us = *elapsed;
#endif
      } else {
        EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(true));
        if (!all_ok) return AbortedError("another frontend failed");
        const auto start = SteadyClock::now();
        status = go_->Signal(value);
        if (status.ok()) status = done_->Wait(value, settings_.op_timeout);
        us = UsSince(start);
        Status answered = session_->Await(answer, OpName(static_cast<Op>(op)));
        if (status.ok() || !answered.ok()) status = answered;
      }
      EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(status.ok()));
      if (!status.ok()) return status.WithContext(fmt::format("iteration {} {}", it, OpName(static_cast<Op>(op))));
      if (!all_ok) return AbortedError("another frontend failed");
      if (it >= settings_.warmup) samples.per_rank[op][0].push_back(us);
    }
    // NOTE: CheckOutput never fails the case: the other frontends wait at the next barrier.
    if (it == 0 && settings_.check && c.fp8()) {
      check = "skipped: fp8 expert outputs are zeros here (inproc checks fp8)";
    } else if (it == 0 && settings_.check) {
      check = CheckOutput(c, t, routing);
    }
  }
  return OkStatus();
}

Status Frontend::TimeBlocking(const Case& c, Tensors& t, uint64_t handle_id,
                              ModeSamples& samples) {
  const int total = settings_.warmup + settings_.iterations;
  const v1::OpOptions blocking = BlockingOptions();
  for (int it = 0; it < total; ++it) {
    for (int op = 0; op < kNumOps; ++op) {
      EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(true));
      if (!all_ok) return AbortedError("another frontend failed");
      const auto start = SteadyClock::now();
      std::future<Status> answer = Post(static_cast<Op>(op), c, t, handle_id, blocking);
      Status status = session_->Await(answer, OpName(static_cast<Op>(op)));
      const double us = UsSince(start);
      EPD_ASSIGN_OR_RETURN(all_ok, Barrier(status.ok()));
      if (!status.ok()) return status.WithContext(fmt::format("iteration {} {}", it, OpName(static_cast<Op>(op))));
      if (!all_ok) return AbortedError("another frontend failed");
      if (it >= settings_.warmup) samples.per_rank[op][0].push_back(us);
    }
  }
  return OkStatus();
}

std::string Frontend::CheckOutput(const Case& c, const Tensors& t, const RankRouting& routing) {
  const void* result = static_cast<const char*>(t.base) + t.out;
  std::vector<char> host;
  Status copied;
#if EPD_BENCH_WITH_CUDA
  if (on_gpu_) {
    host.resize(static_cast<size_t>(c.tokens) * c.row_bytes() + 1);
    copied = gpu::Check(cudaMemcpy(host.data(), result, host.size() - 1, cudaMemcpyDeviceToHost),
                        "cudaMemcpy(out)");
    result = host.data();
  }
#endif
  return copied.ok() ? CheckCombine(c, options_.rank, routing, result, CheckStride(c))
                     : "failed: " + copied.ToString();
}

Status Frontend::TimeFrontendLaunched(const Case& c, Tensors& t, const v1::HandleInfo& handle,
                                      const RankRouting& routing, ModeSamples& samples,
                                      std::string& check) {
#if EPD_BENCH_WITH_CUDA
  std::unique_ptr<HandleView> view;
  std::unique_ptr<FrontendOps> ops;
  Status status = gpu::Check(cudaSetDevice(device()), "cudaSetDevice");
  if (status.ok()) {
    auto opened = HandleView::Open(handle);
    status = opened.status();
    if (status.ok()) view = std::move(opened).value();
  }
  if (status.ok()) {
    auto info = session_->AttachDataPlane(handle.handle_id());
    status = info.status();
    if (status.ok()) {
      auto made = FrontendOps::Open(*info, *view);
      status = made.status();
      if (status.ok()) ops = std::move(made).value();
    }
  }
  EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(status.ok()));
  if (!status.ok()) return status.WithContext("attaching the data plane");
  if (!all_ok) return AbortedError("another frontend failed to attach");
  char* base = static_cast<char*>(t.base);
  const int total = settings_.warmup + settings_.iterations;
  for (int it = 0; it < total; ++it) {
    for (int op = 0; op < kNumOps; ++op) {
      ++gate_value_;
      status = gate_->Arm(stream_, gate_value_);
      if (status.ok()) status = events_->RecordStart(stream_);
      if (status.ok()) {
        switch (static_cast<Op>(op)) {
          case Op::kUpdate:
            status = ops->Update(base + t.topk, false,
                                 reinterpret_cast<const float*>(base + t.weights), c.tokens,
                                 stream_);
            break;
          case Op::kDispatch:
            status = ops->Dispatch(base + t.x, stream_);
            break;
          case Op::kCombine:
            status = ops->Combine(base + t.out, stream_);
            break;
        }
      }
      if (status.ok()) status = events_->RecordStop(stream_);
      EPD_ASSIGN_OR_RETURN(all_ok, Barrier(status.ok()));
      gate_->Open(gate_value_);  // always: an armed gate must not hold the stream
      if (!all_ok) return status.ok() ? AbortedError("another frontend failed") : status;
      double us = 0;
      auto elapsed = events_->ElapsedUs(settings_.op_timeout * 2);
      if (!elapsed.ok()) {
        status = elapsed.status();
      } else {
        us = *elapsed;
        status = ops->TakeErrors();
      }
      EPD_ASSIGN_OR_RETURN(all_ok, Barrier(status.ok()));
      if (!status.ok()) {
        return status.WithContext(fmt::format("iteration {} {}", it, OpName(static_cast<Op>(op))));
      }
      if (!all_ok) return AbortedError("another frontend failed");
      if (it >= settings_.warmup) samples.per_rank[op][0].push_back(us);
    }
    if (it == 0 && settings_.check) check = CheckOutput(c, t, routing);
  }
  return OkStatus();
#else
  (void)c, (void)t, (void)handle, (void)routing, (void)samples, (void)check;
  return UnimplementedError("the frontend-launched mode needs epd-bench built with CUDA");
#endif
}

void Frontend::WriteSamples(const Case& c, const char* mode, const ModeSamples& samples) {
  for (int op = 0; op < kNumOps; ++op) {
    out << "samples " << c.index << " " << mode << " " << OpName(static_cast<Op>(op));
    for (double us : samples.per_rank[op][0]) out << " " << fmt::format("{:.3f}", us);
    out << "\n";
  }
}

StatusOr<double> Frontend::WireBytesSentPerRank() {
  EPD_ASSIGN_OR_RETURN(v1::NodeInfo node, client_->GetNodeInfo());
  uint64_t sent = 0;
  for (const v1::ClusterNode& member : node.cluster().members()) sent += member.bytes_sent();
  return static_cast<double>(sent) / std::max(1, node.cluster().ranks_per_node());
}

StatusOr<double> Frontend::WireMark() {
  if (!options_.spans_nodes) return 0.0;
  StatusOr<double> before = WireBytesSentPerRank();
  EPD_RETURN_IF_ERROR(Barrier(true).status());
  return before.ok() ? *before : std::nan("");
}

void Frontend::WriteWire(const Case& c, const char* mode, double before) {
  if (!options_.spans_nodes || std::isnan(before)) return;
  StatusOr<double> after = WireBytesSentPerRank();
  if (!after.ok()) return;  // the column stays empty
  const int layers = settings_.warmup + settings_.iterations;
  out << "wire " << c.index << " " << mode << " "
      << fmt::format("{:.1f}", (*after - before) / std::max(1, layers)) << "\n";
}

Status Frontend::MeasureControl(uint64_t handle_id, const v1::TensorRef& empty_topk) {
  const int n = options_.control_iterations;
  std::vector<double> node_info, noop;
  for (int i = 0; i < n + settings_.warmup; ++i) {
    const auto start = SteadyClock::now();
    EPD_RETURN_IF_ERROR(client_->GetNodeInfo().status());
    if (i >= settings_.warmup) node_info.push_back(UsSince(start));
  }
  // A no-op op on the session stream: a blocking UpdateHandle binding zero tokens.
  v1::UpdateHandleRequest request;
  request.set_handle_id(handle_id);
  *request.mutable_topk_idx() = empty_topk;  // [0, K]: in bounds, nothing to read
  *request.mutable_options() = BlockingOptions();
  for (int i = 0; i < n + settings_.warmup; ++i) {
    v1::UpdateHandleRequest copy = request;
    const auto start = SteadyClock::now();
    std::future<Status> answer = session_->UpdateAsync(std::move(copy));
    Status status = session_->Await(answer, "no-op update");
    if (!status.ok()) return status.WithContext("no-op update");
    if (i >= settings_.warmup) noop.push_back(UsSince(start));
  }
  out << "control GetNodeInfo_unary";
  for (double us : node_info) out << " " << fmt::format("{:.3f}", us);
  out << "\ncontrol update_n0_stream_blocking";
  for (double us : noop) out << " " << fmt::format("{:.3f}", us);
  out << "\n";
  return OkStatus();
}

Status Frontend::RunCase(const Case& c, bool first) {
  const RankRouting routing = MakeRouting(c.routing, options_.rank, c.tokens, c.top_k, c.experts);
  GroupConfig config = c.Config(fmt::format("{}-{}", options_.group_prefix, c.index));
  config.spans_nodes = options_.spans_nodes;
  auto fail_line = [&](const char* mode, const Status& status) {
    out << "error " << c.index << " " << mode << " " << OneLine(status.ToString()) << "\n";
  };
  Status status;
  if (CreatesGroups()) {
    status = session_->CreateGroup(ToProto(config), /*persistent=*/false).status();
  }
  EPD_ASSIGN_OR_RETURN(bool all_ok, Barrier(status.ok()));
  if (!all_ok) {
    Status why = status.ok() ? AbortedError("group creation failed on another rank") : status;
    fail_line(kModeFenced, why);
    fail_line(kModeBlocking, why);
    if (options_.frontend_launched && on_gpu_) fail_line(kModeFrontendLaunched, why);
    return OkStatus();
  }
  StatusOr<v1::HandleInfo> handle = session_->CreateHandle(config.name);
  if (handle.ok()) out << "held " << c.index << " " << handle->held_bytes() << "\n";
  Tensors t;
  status = handle.ok() ? Setup(c, t, routing) : handle.status().WithContext("CreateHandle");
  EPD_ASSIGN_OR_RETURN(all_ok, Barrier(status.ok()));
  if (all_ok) {
    const uint64_t handle_id = handle->handle_id();
    if (options_.fenced) {
      ModeSamples samples;
      samples.per_rank[0].resize(1), samples.per_rank[1].resize(1), samples.per_rank[2].resize(1);
      std::string check = "skipped";
      StatusOr<double> wire = WireMark();
      Status fenced =
          wire.ok() ? TimeFenced(c, t, handle_id, routing, samples, check) : wire.status();
      if (fenced.ok()) {
        WriteSamples(c, kModeFenced, samples);
        WriteWire(c, kModeFenced, *wire);
        out << "check " << c.index << " " << kModeFenced << " " << OneLine(check) << "\n";
      } else {
        fail_line(kModeFenced, fenced);
      }
    }
    if (options_.blocking) {
      ModeSamples samples;
      samples.per_rank[0].resize(1), samples.per_rank[1].resize(1), samples.per_rank[2].resize(1);
      StatusOr<double> wire = WireMark();
      Status blocking = wire.ok() ? TimeBlocking(c, t, handle_id, samples) : wire.status();
      if (blocking.ok()) {
        WriteSamples(c, kModeBlocking, samples);
        WriteWire(c, kModeBlocking, *wire);
      } else {
        fail_line(kModeBlocking, blocking);
      }
    }
    if (first && options_.rank == 0) {
      v1::TensorRef empty = MakeTensorRef(t.buffer_id, t.topk, v1::DTYPE_INT32, {0, c.top_k});
      Status control = MeasureControl(handle_id, empty);
      if (!control.ok()) out << "control_error " << OneLine(control.ToString()) << "\n";
    }
    // Last on this handle: once frontends launch, the daemon refuses the group's ops.
    if (options_.frontend_launched && on_gpu_) {
      EPD_ASSIGN_OR_RETURN(all_ok, Barrier(true));  // rank 0's control ops are done
      ModeSamples samples;
      samples.per_rank[0].resize(1), samples.per_rank[1].resize(1), samples.per_rank[2].resize(1);
      std::string check = "skipped";
      Status launched = TimeFrontendLaunched(c, t, *handle, routing, samples, check);
      if (launched.ok()) {
        WriteSamples(c, kModeFrontendLaunched, samples);
        out << "check " << c.index << " " << kModeFrontendLaunched << " " << OneLine(check)
            << "\n";
      } else {
        fail_line(kModeFrontendLaunched, launched);
      }
    }
  } else {
    Status why = status.ok() ? AbortedError("handle setup failed on another rank") : status;
    fail_line(kModeFenced, why);
    fail_line(kModeBlocking, why);
    if (options_.frontend_launched && on_gpu_) fail_line(kModeFrontendLaunched, why);
  }
  out.flush();
  EPD_ASSIGN_OR_RETURN(all_ok, Barrier(true));
  if (handle.ok()) session_->DestroyHandle(handle->handle_id()).IgnoreError();
  if (t.buffer_id != 0) session_->ReleaseBuffer(t.buffer_id).IgnoreError();
  EPD_ASSIGN_OR_RETURN(all_ok, Barrier(true));
  if (CreatesGroups()) {
    // Handles drain asynchronously: retry while the group still counts them.
    const auto deadline = SteadyClock::now() + std::chrono::seconds(10);
    while (true) {
      Status destroyed = session_->DestroyGroup(config.name);
      if (destroyed.code() != StatusCode::kFailedPrecondition || SteadyClock::now() > deadline) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  EPD_ASSIGN_OR_RETURN(all_ok, Barrier(true));
  return OkStatus();
}

int RunFrontendImpl(const FrontendOptions& options, const std::vector<Case>& cases,
                    const RunSettings& settings) {
  Frontend frontend(options, settings);
  frontend.out.open(options.result_path, std::ios::out | std::ios::trunc);
  if (!frontend.out) {
    fmt::print(stderr, "epd-bench frontend {}: cannot write {}\n", options.rank, options.result_path);
    return 1;
  }
  Status status = frontend.Init();
  if (!status.ok()) {
    frontend.out << "fatal " << OneLine(status.ToString()) << "\n";
    frontend.out.flush();
    fmt::print(stderr, "epd-bench frontend {}: {}\n", options.rank, status.ToString());
    return 1;
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    status = frontend.RunCase(cases[i], i == 0);
    if (!status.ok()) {
      // A barrier timed out: the peers are gone; nothing else can be measured.
      frontend.out << "fatal " << OneLine(status.ToString()) << "\n";
      frontend.out.flush();
      fmt::print(stderr, "epd-bench frontend {}: {}\n", options.rank, status.ToString());
      return 1;
    }
  }
  frontend.out.flush();
  return 0;
}

}  // namespace

int RunFrontend(const FrontendOptions& options, const std::vector<Case>& cases,
                const RunSettings& settings) {
  return RunFrontendImpl(options, cases, settings);
}

}  // namespace epd::bench
