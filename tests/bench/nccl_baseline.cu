#include "tests/bench/nccl_baseline.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/cuda_copy.h"
#include "tests/bench/gpu_util.h"

namespace epd::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

Status NcclCheck(ncclResult_t result, const char* what) {
  if (result == ncclSuccess) return OkStatus();
  return InternalError("{}: {} ({})", what, ncclGetErrorString(result), ncclGetLastError(nullptr));
}
#define BENCH_NCCL(call) EPD_RETURN_IF_ERROR(NcclCheck((call), #call))

// A reusable barrier of the rank threads (this file is C++17: no std::barrier).
class ThreadBarrier {
 public:
  explicit ThreadBarrier(int count) : count_(count) {}
  void Wait() {
    std::unique_lock lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

// ---- kernels ----

// Copies segments of rows: segment i moves rows [src_base[i], + counts[i]) to
// [dst_base[i], + counts[i]). One block per segment, a warp per row, 16-byte vectors.
__global__ void CopySegments(const char* src, char* dst, const int32_t* src_base,
                             const int32_t* dst_base, const int32_t* counts, int64_t row_vectors) {
  const int segment = blockIdx.x;
  const int rows = counts[segment];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int j = warp; j < rows; j += warps) {
    const int4* from = reinterpret_cast<const int4*>(src) + (int64_t)(src_base[segment] + j) * row_vectors;
    int4* to = reinterpret_cast<int4*>(dst) + (int64_t)(dst_base[segment] + j) * row_vectors;
    for (int64_t v = lane; v < row_vectors; v += 32) to[v] = from[v];
  }
}

// send[i] = x[token[i]] for the rows of the send order.
__global__ void GatherRows(const char* x, const int32_t* token, int rows, char* send,
                           int64_t row_vectors) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int warps = gridDim.x * blockDim.x / 32, lane = threadIdx.x % 32;
  for (int i = warp; i < rows; i += warps) {
    const int4* from = reinterpret_cast<const int4*>(x) + (int64_t)token[i] * row_vectors;
    int4* to = reinterpret_cast<int4*>(send) + (int64_t)i * row_vectors;
    for (int64_t v = lane; v < row_vectors; v += 32) to[v] = from[v];
  }
}

__device__ inline float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline float Load(const __half* p) { return __half2float(*p); }
__device__ inline float Load(const float* p) { return *p; }
__device__ inline void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline void Store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ inline void Store(float* p, float v) { *p = v; }

// out[t] = sum over k ascending of w[t][k] * rows[pos[t][k]] (pos -1: nothing), fp32, no FMA.
template <typename T>
__global__ void WeightedSum(const T* rows, const int32_t* pos, const float* weights, int top_k,
                            int hidden, T* out) {
  const int t = blockIdx.x;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < top_k; ++k) {
      const int p = pos[t * top_k + k];
      if (p < 0) continue;
      acc = __fadd_rn(acc, __fmul_rn(weights[t * top_k + k], Load(rows + (int64_t)p * hidden + h)));
    }
    Store(out + (int64_t)t * hidden + h, acc);
  }
}

struct DeviceArrays {
  std::unique_ptr<gpu::DeviceBuffer> x, send, recv, experts, back, out;
  std::unique_ptr<gpu::DeviceBuffer> token, pos, weights, send_counts, recv_counts, segments;
};

}  // namespace

struct NcclBaseline::Impl {
  int ranks = 0;
  std::vector<ncclComm_t> comms;
  std::vector<cudaStream_t> streams;
  ~Impl() {
    for (size_t r = 0; r < comms.size(); ++r) {
      cudaSetDevice(static_cast<int>(r));
      if (streams[r] != nullptr) cudaStreamDestroy(streams[r]);
      ncclCommDestroy(comms[r]);
    }
  }

  // One rank's part of a case; every rank thread runs it in lockstep.
  Status RunRank(const Case& c, const RunSettings& settings, int rank, ThreadBarrier& barrier,
                 std::atomic<bool>& failed, ModeSamples& samples, std::string& check);
};

NcclBaseline::NcclBaseline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclBaseline::~NcclBaseline() = default;

StatusOr<std::unique_ptr<NcclBaseline>> NcclBaseline::Create(int ranks) {
  auto impl = std::make_unique<Impl>();
  impl->ranks = ranks;
  impl->comms.resize(ranks);
  impl->streams.resize(ranks, nullptr);
  std::vector<int> devices(ranks);
  for (int r = 0; r < ranks; ++r) devices[r] = r;
  BENCH_NCCL(ncclCommInitAll(impl->comms.data(), ranks, devices.data()));
  for (int r = 0; r < ranks; ++r) {
    EPD_BENCH_CUDA(cudaSetDevice(r));
    EPD_BENCH_CUDA(cudaStreamCreateWithFlags(&impl->streams[r], cudaStreamNonBlocking));
  }
  return std::unique_ptr<NcclBaseline>(new NcclBaseline(std::move(impl)));
}

std::string NcclBaseline::version() const {
  int v = 0;
  ncclGetVersion(&v);
  return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
}

Result NcclBaseline::Run(const Case& c, const RunSettings& settings) {
  Result result;
  result.bench_case = c;
  result.mode = kModeNccl;
  result.timing = "gpu_events";  // update: host clock (it runs on the host)
  double selections = 0;
  for (int r = 0; r < c.ranks; ++r) {
    selections += MakeRouting(c.routing, r, c.tokens, c.top_k, c.experts).valid_selections;
  }
  result.selections_per_rank = selections / c.ranks;
  if (c.layout != Layout::kExpertMajor) {
    result.error = "the NCCL baseline implements the expert-major layout only";
    return result;
  }
  if (c.ranks != impl_->ranks || c.experts % c.ranks != 0) {
    result.error = fmt::format("case of {} ranks on a baseline of {}", c.ranks, impl_->ranks);
    return result;
  }
  ThreadBarrier barrier(c.ranks);
  std::atomic<bool> failed{false};
  ModeSamples samples;
  for (auto& per_op : samples.per_rank) per_op.resize(c.ranks);
  std::vector<std::string> checks(c.ranks, "skipped");
  std::vector<Status> statuses(c.ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < c.ranks; ++r) {
    threads.emplace_back([&, r] {
      statuses[r] = impl_->RunRank(c, settings, r, barrier, failed, samples, checks[r]);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.ranks; ++r) {
    if (!statuses[r].ok() && result.error.empty()) {
      result.error = statuses[r].WithContext(fmt::format("rank {}", r)).ToString();
    }
  }
  result.check = "passed";
  for (const std::string& check : checks) {
    if (check != "passed") result.check = check;
  }
  const double bytes = LogicalBytes(c, result.selections_per_rank);
  for (int op = 0; op < kNumOps; ++op) {
    result.ops[OpName(static_cast<Op>(op))] = Summarize(samples.per_rank[op], op == 0 ? 0.0 : bytes);
  }
  return result;
}

Status NcclBaseline::Impl::RunRank(const Case& c, const RunSettings& settings, int rank,
                                   ThreadBarrier& barrier, std::atomic<bool>& failed,
                                   ModeSamples& samples, std::string& check) {
  const int R = c.ranks, L = c.experts / c.ranks, K = c.top_k, n = c.tokens;
  const size_t row = c.row_bytes();
  const int64_t row_vectors = static_cast<int64_t>(row / 16);
  cudaStream_t stream = streams[rank];
  ncclComm_t comm = comms[rank];
  const RankRouting routing = MakeRouting(c.routing, rank, n, K, c.experts);
  std::vector<char> x_host(std::max<size_t>(1, n * row));
  FillTokens(c, rank, x_host.data());

  // Buffers: any rank receives at most R * n * K rows.
  const size_t max_recv = static_cast<size_t>(R) * n * K;
  DeviceArrays d;
  std::unique_ptr<gpu::EventPair> events;
  // NOTE: every failure below must still reach the barrier the other rank threads wait at.
  Status setup = [&]() -> Status {
    EPD_BENCH_CUDA(cudaSetDevice(rank));
    EPD_ASSIGN_OR_RETURN(events, gpu::EventPair::Create(rank));
    EPD_ASSIGN_OR_RETURN(d.x, gpu::DeviceBuffer::Create(rank, x_host.size()));
    EPD_ASSIGN_OR_RETURN(d.send, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, n * K) * row));
    EPD_ASSIGN_OR_RETURN(d.recv, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, max_recv) * row));
    EPD_ASSIGN_OR_RETURN(d.experts, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, max_recv) * row));
    EPD_ASSIGN_OR_RETURN(d.back, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, n * K) * row));
    EPD_ASSIGN_OR_RETURN(d.out, gpu::DeviceBuffer::Create(rank, x_host.size()));
    EPD_ASSIGN_OR_RETURN(d.token, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, n * K) * 4));
    EPD_ASSIGN_OR_RETURN(d.pos, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, n * K) * 4));
    EPD_ASSIGN_OR_RETURN(d.weights, gpu::DeviceBuffer::Create(rank, std::max<size_t>(1, n * K) * 4));
    EPD_ASSIGN_OR_RETURN(d.send_counts, gpu::DeviceBuffer::Create(rank, c.experts * 4));
    EPD_ASSIGN_OR_RETURN(d.recv_counts, gpu::DeviceBuffer::Create(rank, c.experts * 4));
    // src_base, dst_base, counts of the R * L (source, expert) segments.
    EPD_ASSIGN_OR_RETURN(d.segments, gpu::DeviceBuffer::Create(rank, 3 * c.experts * 4));
    EPD_RETURN_IF_ERROR(epd::cuda::CopyNow(d.x->data(), x_host.data(), x_host.size()));
    return OkStatus();
  }();
  int32_t* pinned = nullptr;  // recv counts [E] | segments [3 * E]
  if (setup.ok()) {
    setup = gpu::Check(cudaMallocHost(reinterpret_cast<void**>(&pinned), 4 * c.experts * 4),
                       "cudaMallocHost");
  }
  struct FreePinned {
    int32_t* p;
    ~FreePinned() {
      if (p != nullptr) cudaFreeHost(p);
    }
  } free_pinned{pinned};
  barrier.Wait();
  if (!setup.ok()) failed = true;
  barrier.Wait();
  if (failed) return setup.ok() ? AbortedError("another rank failed") : setup;

  // Host state bound by "update" and read by dispatch / combine.
  std::vector<int32_t> send_counts(c.experts), send_rows(R), send_offset(R + 1);
  std::vector<int32_t> recv_rows(R), recv_offset(R + 1);
  std::vector<int32_t> token, pos(static_cast<size_t>(n) * K, -1);
  int32_t* recv_counts = pinned;
  int32_t* segments = pinned + c.experts;
  int total_send = 0, total_recv = 0;

  auto update = [&]() -> Status {
    std::fill(send_counts.begin(), send_counts.end(), 0);
    for (int32_t e : routing.topk_idx) {
      if (e >= 0) ++send_counts[e];
    }
    // Send order: by expert (hence by destination rank), then token, then k.
    std::vector<int32_t> expert_offset(c.experts + 1, 0);
    for (int e = 0; e < c.experts; ++e) expert_offset[e + 1] = expert_offset[e] + send_counts[e];
    total_send = expert_offset[c.experts];
    token.assign(total_send, 0);
    std::vector<int32_t> cursor(expert_offset.begin(), expert_offset.end() - 1);
    for (int t = 0; t < n; ++t) {
      for (int k = 0; k < K; ++k) {
        const int e = routing.topk_idx[static_cast<size_t>(t) * K + k];
        if (e < 0) continue;
        const int i = cursor[e]++;
        token[i] = t;
        pos[static_cast<size_t>(t) * K + k] = i;
      }
    }
    for (int r = 0; r < R; ++r) {
      send_offset[r] = expert_offset[r * L];
      send_rows[r] = expert_offset[(r + 1) * L] - expert_offset[r * L];
    }
    send_offset[R] = total_send;
    EPD_BENCH_CUDA(cudaMemcpyAsync(d.token->data(), token.data(), total_send * 4,
                                   cudaMemcpyHostToDevice, stream));
    EPD_BENCH_CUDA(cudaMemcpyAsync(d.pos->data(), pos.data(), pos.size() * 4,
                                   cudaMemcpyHostToDevice, stream));
    EPD_BENCH_CUDA(cudaMemcpyAsync(d.weights->data(), routing.weights.data(),
                                   routing.weights.size() * 4, cudaMemcpyHostToDevice, stream));
    EPD_BENCH_CUDA(cudaMemcpyAsync(d.send_counts->data(), send_counts.data(), c.experts * 4,
                                   cudaMemcpyHostToDevice, stream));
    EPD_BENCH_CUDA(cudaStreamSynchronize(stream));
    return OkStatus();
  };

  auto exchange = [&](const char* send, const int32_t* s_rows, const int32_t* s_off, char* recv,
                      const int32_t* r_rows, const int32_t* r_off) -> Status {
    BENCH_NCCL(ncclGroupStart());
    for (int peer = 0; peer < R; ++peer) {
      BENCH_NCCL(ncclSend(send + static_cast<size_t>(s_off[peer]) * row,
                          static_cast<size_t>(s_rows[peer]) * row, ncclUint8, peer, comm, stream));
      BENCH_NCCL(ncclRecv(recv + static_cast<size_t>(r_off[peer]) * row,
                          static_cast<size_t>(r_rows[peer]) * row, ncclUint8, peer, comm, stream));
    }
    BENCH_NCCL(ncclGroupEnd());
    return OkStatus();
  };

  auto dispatch = [&]() -> Status {
    // 1. counts: L per peer, both ways.
    auto* sc = static_cast<int32_t*>(d.send_counts->data());
    auto* rc = static_cast<int32_t*>(d.recv_counts->data());
    BENCH_NCCL(ncclGroupStart());
    for (int peer = 0; peer < R; ++peer) {
      BENCH_NCCL(ncclSend(sc + peer * L, L, ncclInt32, peer, comm, stream));
      BENCH_NCCL(ncclRecv(rc + peer * L, L, ncclInt32, peer, comm, stream));
    }
    BENCH_NCCL(ncclGroupEnd());
    // 2. the host needs the receive sizes: copy and wait.
    EPD_BENCH_CUDA(cudaMemcpyAsync(recv_counts, rc, c.experts * 4, cudaMemcpyDeviceToHost, stream));
    EPD_BENCH_CUDA(cudaStreamSynchronize(stream));
    // recv_counts[s * L + l]: rows of source s for local expert l.
    total_recv = 0;
    for (int s = 0; s < R; ++s) {
      recv_offset[s] = total_recv;
      recv_rows[s] = 0;
      for (int l = 0; l < L; ++l) recv_rows[s] += recv_counts[s * L + l];
      total_recv += recv_rows[s];
    }
    recv_offset[R] = total_recv;
    // Segments (s, l): from the per-source order to expert-major (expert, source, token).
    int32_t* src_base = segments;
    int32_t* dst_base = segments + R * L;
    int32_t* counts = segments + 2 * R * L;
    int dst = 0;
    for (int l = 0; l < L; ++l) {
      for (int s = 0; s < R; ++s) {
        dst_base[s * L + l] = dst;
        dst += recv_counts[s * L + l];
      }
    }
    for (int s = 0; s < R; ++s) {
      int src = recv_offset[s];
      for (int l = 0; l < L; ++l) {
        src_base[s * L + l] = src;
        counts[s * L + l] = recv_counts[s * L + l];
        src += recv_counts[s * L + l];
      }
    }
    EPD_BENCH_CUDA(cudaMemcpyAsync(d.segments->data(), segments, 3 * R * L * 4,
                                   cudaMemcpyHostToDevice, stream));
    // 3. pack, 4. payload, 5. reorder to expert-major.
    if (total_send > 0) {
      GatherRows<<<std::min(1024, (total_send + 7) / 8), 256, 0, stream>>>(
          static_cast<const char*>(d.x->data()), static_cast<const int32_t*>(d.token->data()),
          total_send, static_cast<char*>(d.send->data()), row_vectors);
      EPD_BENCH_CUDA(cudaGetLastError());
    }
    EPD_RETURN_IF_ERROR(exchange(static_cast<const char*>(d.send->data()), send_rows.data(),
                                 send_offset.data(), static_cast<char*>(d.recv->data()),
                                 recv_rows.data(), recv_offset.data()));
    const auto* seg = static_cast<const int32_t*>(d.segments->data());
    CopySegments<<<R * L, 256, 0, stream>>>(static_cast<const char*>(d.recv->data()),
                                            static_cast<char*>(d.experts->data()), seg,
                                            seg + R * L, seg + 2 * R * L, row_vectors);
    return gpu::Check(cudaGetLastError(), "CopySegments");
  };

  auto combine = [&]() -> Status {
    // Expert outputs = the dispatched rows (identity experts), back to per-source order.
    const auto* seg = static_cast<const int32_t*>(d.segments->data());
    CopySegments<<<R * L, 256, 0, stream>>>(static_cast<const char*>(d.experts->data()),
                                            static_cast<char*>(d.recv->data()), seg + R * L, seg,
                                            seg + 2 * R * L, row_vectors);
    EPD_BENCH_CUDA(cudaGetLastError());
    EPD_RETURN_IF_ERROR(exchange(static_cast<const char*>(d.recv->data()), recv_rows.data(),
                                 recv_offset.data(), static_cast<char*>(d.back->data()),
                                 send_rows.data(), send_offset.data()));
    if (n > 0) {
      const auto* p = static_cast<const int32_t*>(d.pos->data());
      const auto* w = static_cast<const float*>(d.weights->data());
      switch (c.dtype) {
        case DType::kBf16:
          WeightedSum<<<n, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(d.back->data()), p, w,
                                             K, c.hidden, static_cast<__nv_bfloat16*>(d.out->data()));
          break;
        case DType::kFp16:
          WeightedSum<<<n, 256, 0, stream>>>(static_cast<const __half*>(d.back->data()), p, w, K,
                                             c.hidden, static_cast<__half*>(d.out->data()));
          break;
        default:
          WeightedSum<<<n, 256, 0, stream>>>(static_cast<const float*>(d.back->data()), p, w, K,
                                             c.hidden, static_cast<float*>(d.out->data()));
      }
    }
    return gpu::Check(cudaGetLastError(), "WeightedSum");
  };

  Status status;
  const int total = settings.warmup + settings.iterations;
  for (int it = 0; it < total; ++it) {
    for (int op = 0; op < kNumOps; ++op) {
      barrier.Wait();
      double us = 0;
      Status op_status;
      if (op == 0) {
        const auto start = SteadyClock::now();
        op_status = update();
        us = std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count();
      } else {
        op_status = events->RecordStart(stream);
        if (op_status.ok()) op_status = op == 1 ? dispatch() : combine();
        if (op_status.ok()) op_status = events->RecordStop(stream);
        if (op_status.ok()) {
          auto elapsed = events->ElapsedUs();
          if (elapsed.ok()) us = *elapsed;
          else op_status = elapsed.status();
        }
      }
      if (!op_status.ok()) {
        status = op_status.WithContext(fmt::format("iteration {} {}", it, OpName(static_cast<Op>(op))));
        failed = true;
      }
      barrier.Wait();
      if (failed) return status.ok() ? AbortedError("another rank failed") : status;
      if (it >= settings.warmup) samples.per_rank[op][rank].push_back(us);
    }
    if (it == 0 && settings.check) {
      std::vector<char> out(x_host.size());
      Status copied = gpu::Check(
          cudaMemcpy(out.data(), d.out->data(), out.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
      check = copied.ok() ? CheckCombine(c, rank, routing, out.data(), CheckStride(c))
                          : "failed: " + copied.ToString();
    }
  }
  return OkStatus();
}

}  // namespace epd::bench
