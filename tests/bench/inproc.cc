#include "tests/bench/inproc.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstring>
#include <future>
#include <thread>

#include "daemon/backends/cpu/cpu_backend.h"
#include "tests/bench/rank_devices.h"
#if EPD_BENCH_WITH_CUDA_BACKEND
#include "daemon/backends/cuda/cuda_backend.h"
#endif
#if EPD_BENCH_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_copy.h"
#include "tests/bench/gpu_util.h"
#endif

namespace epd::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

double UsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count();
}

// Waits for Complete()'s callback, bounded.
Status WaitComplete(Backend& backend, BackendHandle& handle, std::chrono::milliseconds timeout) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> future = promise->get_future();
  backend.Complete(handle, [promise](Status status) { promise->set_value(std::move(status)); });
  if (future.wait_for(timeout) != std::future_status::ready) {
    return DeadlineExceededError("Complete() did not report within {} ms", timeout.count());
  }
  return future.get();
}

// Copies between a rank's memory (host on cpu, device on cuda) and the host.
Status CopyBytes(bool on_gpu, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return OkStatus();
  if (!on_gpu) {
    std::memcpy(dst, src, bytes);
    return OkStatus();
  }
#if EPD_BENCH_WITH_CUDA
  return epd::cuda::CopyNow(dst, src, bytes);  // landed before the next kernel reads it
#else
  return FailedPreconditionError("no CUDA in this build");
#endif
}

// fp8: the identity experts' output, bf16(e4m3 * scale) of every received row, written to
// `expert_out` (rank memory) for combine to read; done once, after the first dispatch.
Status FillExpertOut(const Case& c, bool on_gpu, BackendHandle& handle, void* expert_out) {
  const HandleLayout& l = handle.layout();
  const GroupConfig config = c.Config("experts");
  const char* base = static_cast<const char*>(handle.exported().data());
  size_t rows = l.recv_rows;
  if (c.algorithm == Algorithm::kHighThroughput) {  // rows [0, sum of rank counts) are packed
    std::vector<int32_t> counts(c.ranks);
    EPD_RETURN_IF_ERROR(
        CopyBytes(on_gpu, counts.data(), base + l.recv_rank_counts_offset, counts.size() * 4));
    rows = 0;
    for (int32_t count : counts) rows += static_cast<size_t>(count);
  } else if (c.layout == Layout::kExpertMajor) {  // rows [0, sum of counts) are packed
    std::vector<int32_t> counts(c.experts / c.ranks);
    EPD_RETURN_IF_ERROR(
        CopyBytes(on_gpu, counts.data(), base + l.recv_counts_offset, counts.size() * 4));
    rows = 0;
    for (int32_t count : counts) rows += static_cast<size_t>(count);
  }
  std::vector<char> q(rows * config.recv_row_bytes()), scales(rows * config.scale_row_bytes());
  std::vector<char> z(rows * c.row_bytes());
  EPD_RETURN_IF_ERROR(CopyBytes(on_gpu, q.data(), base + l.recv_x_offset, q.size()));
  EPD_RETURN_IF_ERROR(CopyBytes(on_gpu, scales.data(), base + l.recv_scales_offset, scales.size()));
  DequantizeRows(c, q.data(), scales.data(), rows, z.data());
  return CopyBytes(on_gpu, expert_out, z.data(), z.size());
}

}  // namespace


struct InprocRunner::RankState {
  RankRouting routing;
  std::vector<char> x_host, out_host;
  std::vector<char> xq_host, x_scales_host, expert_out_host;  // fp8
  // Where the op's tensors live: host vectors (cpu) or device buffers (cuda).
  void* x = nullptr;
  void* topk = nullptr;
  void* weights = nullptr;
  void* out = nullptr;
  void* xq = nullptr;          // fp8 pre-quantized x
  void* x_scales = nullptr;    // and its scales
  void* expert_out = nullptr;  // fp8: [recv_rows, H] token dtype
#if EPD_BENCH_WITH_CUDA
  std::unique_ptr<gpu::DeviceBuffer> x_dev, topk_dev, weights_dev, out_dev;
  std::unique_ptr<gpu::DeviceBuffer> xq_dev, x_scales_dev, expert_out_dev;
  std::unique_ptr<gpu::Gate> gate;
  std::unique_ptr<gpu::EventPair> events;
  cudaStream_t stream = nullptr;
#endif
};

// The rank threads of one Run meet here around every op; a failure on any rank stops all.
struct InprocRunner::Sync {
  std::barrier<> barrier;
  std::atomic<bool> failed{false};
  explicit Sync(int n) : barrier(n) {}
};

StatusOr<std::unique_ptr<InprocRunner>> InprocRunner::Create(const std::string& backend, int ranks,
                                                             const std::vector<int>& gpus,
                                                             std::chrono::milliseconds op_timeout) {
  std::unique_ptr<InprocRunner> runner(new InprocRunner());
  runner->ranks_ = ranks;
  if (backend == "cpu") {
    EPD_ASSIGN_OR_RETURN(runner->backend_, CreateCpuBackend({ranks, op_timeout}));
    return runner;
  }
#if EPD_BENCH_WITH_CUDA_BACKEND
  if (backend == "cuda") {
    CudaBackendOptions options;
    options.devices = RankDevices(gpus, ranks);
    runner->devices_ = options.devices;
    int sms = 0;
    EPD_BENCH_CUDA(
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, options.devices[0]));
    if (const int bound = SharedGpuBlockBound(options.devices, sms); bound > 0) {
      // Ranks sharing a GPU cannot have NCCL communicators either (nothing here uses them).
      options.create_nccl_comms = false;
      options.max_blocks_per_op = bound;
    }
    options.op_timeout = op_timeout;
    EPD_ASSIGN_OR_RETURN(runner->backend_, CreateCudaBackend(options));
    runner->on_gpu_ = true;
    return runner;
  }
#endif
  return InvalidArgumentError("backend '{}' is not available in this build of epd-bench",
                              backend);
}

InprocRunner::~InprocRunner() = default;

Result InprocRunner::Run(const Case& c, const RunSettings& settings) {
  Result result;
  result.bench_case = c;
  result.mode = kModeInproc;
  result.timing = on_gpu_ ? "gpu_events" : "host_clock";
  const GroupConfig config = c.Config(fmt::format("bench-inproc-{}", c.index));
  result.handle_bytes = ComputeHandleLayout(config).total_bytes();
  if (Status valid = config.Validate(ranks_); !valid.ok()) {
    result.error = valid.ToString();
    return result;
  }
  auto group = backend_->CreateGroup(config);
  if (!group.ok()) {
    result.error = group.status().WithContext("CreateGroup").ToString();
    return result;
  }
  std::vector<std::unique_ptr<BackendHandle>> handles;
  for (int r = 0; r < ranks_; ++r) {
    auto handle = backend_->CreateHandle(**group, r);
    if (!handle.ok()) {
      result.error = handle.status().WithContext(fmt::format("CreateHandle rank {}", r)).ToString();
      return result;
    }
    handles.push_back(std::move(handle).value());
  }

  // Inputs: identical routing and tokens in every mode.
  std::vector<std::unique_ptr<RankState>> states;
  double selections = 0;
  MovedBytes moved;
  const size_t expert_out_bytes =
      c.fp8() ? ComputeHandleLayout(config).recv_rows * c.row_bytes() : 0;
  for (int r = 0; r < ranks_; ++r) {
    auto state = std::make_unique<RankState>();
    state->routing = MakeRouting(c.routing, r, c.tokens, c.top_k, c.experts);
    selections += static_cast<double>(state->routing.valid_selections);
    const MovedBytes rank_moved = BytesMoved(c, state->routing);
    moved.dispatch += rank_moved.dispatch / ranks_;
    moved.combine += rank_moved.combine / ranks_;
    state->x_host.resize(std::max<size_t>(1, c.tokens * c.row_bytes()));
    state->out_host.resize(std::max<size_t>(1, c.tokens * c.row_bytes()));
    FillTokens(c, r, state->x_host.data());
    if (c.fp8()) {
      QuantizeTokens(c, state->x_host.data(), &state->xq_host, &state->x_scales_host);
      state->expert_out_host.assign(std::max<size_t>(1, expert_out_bytes), 0);
    }
    if (!on_gpu_) {
      state->x = state->x_host.data();
      state->topk = state->routing.topk_idx.data();
      state->weights = state->routing.weights.data();
      state->out = state->out_host.data();
      state->xq = state->xq_host.data();
      state->x_scales = state->x_scales_host.data();
      state->expert_out = state->expert_out_host.data();
    }
#if EPD_BENCH_WITH_CUDA_BACKEND
    if (on_gpu_) {
      auto setup = [&]() -> Status {
        const int device = devices_[r];
        const size_t idx_bytes = std::max<size_t>(1, state->routing.topk_idx.size() * 4);
        EPD_ASSIGN_OR_RETURN(state->x_dev, gpu::DeviceBuffer::Create(device, state->x_host.size()));
        EPD_ASSIGN_OR_RETURN(state->out_dev,
                             gpu::DeviceBuffer::Create(device, state->out_host.size()));
        EPD_ASSIGN_OR_RETURN(state->topk_dev, gpu::DeviceBuffer::Create(device, idx_bytes));
        EPD_ASSIGN_OR_RETURN(state->weights_dev, gpu::DeviceBuffer::Create(device, idx_bytes));
        EPD_RETURN_IF_ERROR(
            epd::cuda::CopyNow(state->x_dev->data(), state->x_host.data(), state->x_host.size()));
        EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(state->topk_dev->data(),
                                               state->routing.topk_idx.data(),
                                               state->routing.topk_idx.size() * 4));
        EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(state->weights_dev->data(),
                                               state->routing.weights.data(),
                                               state->routing.weights.size() * 4));
        if (c.fp8()) {
          EPD_ASSIGN_OR_RETURN(state->xq_dev,
                               gpu::DeviceBuffer::Create(device, state->xq_host.size()));
          EPD_ASSIGN_OR_RETURN(state->x_scales_dev,
                               gpu::DeviceBuffer::Create(device, state->x_scales_host.size()));
          EPD_ASSIGN_OR_RETURN(state->expert_out_dev,
                               gpu::DeviceBuffer::Create(device, state->expert_out_host.size()));
          EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(state->xq_dev->data(), state->xq_host.data(),
                                                 state->xq_host.size()));
          EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(state->x_scales_dev->data(),
                                                 state->x_scales_host.data(),
                                                 state->x_scales_host.size()));
          state->xq = state->xq_dev->data();
          state->x_scales = state->x_scales_dev->data();
          state->expert_out = state->expert_out_dev->data();
        }
        EPD_ASSIGN_OR_RETURN(state->gate, gpu::Gate::Create(gpu::Gate::Kind::kKernel));
        EPD_ASSIGN_OR_RETURN(state->events, gpu::EventPair::Create(device));
        state->stream = CudaBackendStream(*backend_, *handles[r]);
        if (state->stream == nullptr) {
          return FailedPreconditionError("the cuda backend exposes no stream for rank {}", r);
        }
        return OkStatus();
      };
      if (Status s = setup(); !s.ok()) {
        result.error = s.WithContext(fmt::format("rank {} setup", r)).ToString();
        return result;
      }
      state->x = state->x_dev->data();
      state->topk = state->topk_dev->data();
      state->weights = state->weights_dev->data();
      state->out = state->out_dev->data();
    }
#endif
    states.push_back(std::move(state));
  }
  result.selections_per_rank = selections / ranks_;

  ModeSamples samples;
  for (auto& per_op : samples.per_rank) per_op.resize(ranks_);
  std::vector<std::string> checks(ranks_, "skipped");
  std::vector<Status> statuses(ranks_);
  Sync sync(ranks_);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks_; ++r) {
    threads.emplace_back([&, r] {
      statuses[r] = RunRank(c, settings, **group, handles, states, sync, r, samples, checks[r]);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks_; ++r) {
    if (!statuses[r].ok() && result.error.empty()) {
      result.error = statuses[r].WithContext(fmt::format("rank {}", r)).ToString();
    }
  }
  result.check = "passed";
  for (const std::string& check : checks) {
    if (check != "passed") {
      result.check = check;
      break;
    }
  }
  const double bytes = LogicalBytes(c, result.selections_per_rank);
  for (int op = 0; op < kNumOps; ++op) {
    OpSummary& summary = result.ops[OpName(static_cast<Op>(op))];
    summary = Summarize(samples.per_rank[op], op == static_cast<int>(Op::kUpdate) ? 0.0 : bytes);
    if (op == static_cast<int>(Op::kDispatch)) summary.moved_bytes = moved.dispatch;
    if (op == static_cast<int>(Op::kCombine)) summary.moved_bytes = moved.combine;
  }
  // Release the handles before the group, on this thread, after every rank finished.
  handles.clear();
  return result;
}

Status InprocRunner::RunRank(const Case& c, const RunSettings& settings, BackendGroup& group,
                             std::vector<std::unique_ptr<BackendHandle>>& handles,
                             std::vector<std::unique_ptr<RankState>>& states, Sync& sync,
                             int rank, ModeSamples& samples, std::string& check) {
  Sync* shared = &sync;

  RankState& me = *states[rank];
  BackendHandle& handle = *handles[rank];
  const HandleLayout& layout = handle.layout();
  UpdateArgs update;
  update.topk_idx = TensorView{me.topk, DType::kInt32, {c.tokens, c.top_k}};
  update.topk_weights = TensorView{me.weights, DType::kFp32, {c.tokens, c.top_k}};
  update.num_tokens = c.tokens;
  // This rank's arguments only: the peers' buffers were published with their handles.
  DispatchArgs dispatch;
  dispatch.x = TensorView{me.x, c.dtype, {c.tokens, c.hidden}};
  if (c.prequantized) {
    const GroupConfig config = c.Config("args");
    dispatch.x = TensorView{me.xq, DType::kFp8E4m3, {c.tokens, c.hidden}};
    dispatch.x_scales =
        TensorView{me.x_scales, config.scale_dtype(), {c.tokens, config.scale_blocks()}};
  }
  CombineArgs combine;
  // fp8 dispatch leaves e4m3 in recv_x: combine reads the experts' outputs from a buffer.
  combine.expert_out =
      c.fp8() ? me.expert_out
              : static_cast<const char*>(handle.exported().data()) + layout.recv_x_offset;
  combine.out = TensorView{me.out, c.dtype, {c.tokens, c.hidden}};

  Status status;
  uint32_t gate_value = 0;
  const int total = settings.warmup + settings.iterations;
  for (int it = 0; it < total; ++it) {
    for (int op = 0; op < kNumOps; ++op) {
      auto run_op = [&]() -> Status {
        switch (static_cast<Op>(op)) {
          case Op::kUpdate: return backend_->UpdateHandle(handle, update);
          case Op::kDispatch:
            return backend_->Dispatch(handle, dispatch);
          case Op::kCombine:
            return backend_->Combine(handle, combine);
        }
        return OkStatus();
      };
      double us = 0;
      Status op_status;
      if (!on_gpu_) {
        shared->barrier.arrive_and_wait();
        const auto start = SteadyClock::now();
        op_status = run_op();
        if (op_status.ok()) op_status = WaitComplete(*backend_, handle, settings.op_timeout);
        us = UsSince(start);
      } else {
#if EPD_BENCH_WITH_CUDA
        ++gate_value;
        // The backend may leave another device current on this thread.
        op_status = gpu::Check(cudaSetDevice(devices_[rank]), "cudaSetDevice");
        if (op_status.ok()) op_status = me.gate->Arm(me.stream, gate_value);
        if (op_status.ok()) op_status = me.events->RecordStart(me.stream);
        if (op_status.ok()) op_status = run_op();
        if (op_status.ok()) op_status = me.events->RecordStop(me.stream);
        // Every rank's work is queued behind its gate: release them together.
        shared->barrier.arrive_and_wait();
        me.gate->Open(gate_value);
        if (op_status.ok()) op_status = WaitComplete(*backend_, handle, settings.op_timeout);
        if (op_status.ok() && me.gate->TakeTimedOut()) {
          // The gate opens once every rank has enqueued, so it gives up only when an enqueue
          // took the whole timeout, e.g. waiting for the GPU behind the spinning gate (a
          // kernel's lazy first load did): the span timed nothing, and the op came 30 s late.
          op_status = DeadlineExceededError(
              "the gate gave up before every rank had enqueued the op: an enqueue waited for "
              "the GPU");
        }
        if (op_status.ok()) {
          auto elapsed = me.events->ElapsedUs(settings.op_timeout * 2);
          if (elapsed.ok()) us = *elapsed;
          else op_status = elapsed.status();
        }
#endif
      }
      if (!op_status.ok()) {
        status = op_status.WithContext(fmt::format("iteration {} {}", it, OpName(static_cast<Op>(op))));
        shared->failed = true;
      }
      if (op_status.ok() && it == 0 && settings.check && c.fp8() &&
          static_cast<Op>(op) == Op::kDispatch) {
        // Outside the timed span: the experts' output that the first combine checks.
        Status filled;
#if EPD_BENCH_WITH_CUDA
        if (on_gpu_) filled = gpu::Check(cudaSetDevice(devices_[rank]), "cudaSetDevice");
#endif
        if (filled.ok()) filled = FillExpertOut(c, on_gpu_, handle, me.expert_out);
        if (!filled.ok()) {
          status = filled.WithContext("filling expert_out");
          shared->failed = true;
        }
      }
      shared->barrier.arrive_and_wait();
      if (shared->failed) return status.ok() ? AbortedError("another rank failed") : status;
      if (it >= settings.warmup) samples.per_rank[op][rank].push_back(us);
    }
    if (it == 0 && settings.check) {
      const void* out = me.out;
#if EPD_BENCH_WITH_CUDA
      // NOTE: never return from here: the other rank threads wait at the next barrier.
      Status copied;
      if (on_gpu_) {
        copied = gpu::Check(cudaSetDevice(devices_[rank]), "cudaSetDevice");
        if (copied.ok()) {
          copied = gpu::Check(cudaMemcpy(me.out_host.data(), me.out, me.out_host.size(),
                                         cudaMemcpyDeviceToHost),
                              "cudaMemcpy(out)");
        }
        out = me.out_host.data();
      }
      check = copied.ok() ? CheckCombine(c, rank, me.routing, out, CheckStride(c))
                          : "failed: " + copied.ToString();
#else
      check = CheckCombine(c, rank, me.routing, out, CheckStride(c));
#endif
    }
  }
  (void)gate_value;
  return OkStatus();
}

}  // namespace epd::bench
