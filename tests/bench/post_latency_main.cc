// epd-post-bench: host time a C++ frontend spends to post one fenced op (Combine with a wait
// and a signal fence; on GPUs plus the two fence stream ops), the C++ side of
// tests/bench/python_post_latency.py, which runs this binary and writes both into one JSON.
//
//   epd-post-bench --address unix:///run/epd/epd.sock [--iterations 2000] [--rank 0]
// Prints one JSON object: {"client": "cpp", "backend": ..., "post": {iterations, median_us, ...}}.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include "client/epd/client.h"
#if EPD_WITH_CUDA
#include <cuda_runtime_api.h>

#include "client/epd/cuda.h"
#include "common/cuda_copy.h"
#endif

namespace {

constexpr int kExperts = 8, kHidden = 128, kTokens = 16, kTopK = 2;

int Fail(const epd::Status& status, const char* what) {
  std::fprintf(stderr, "epd-post-bench: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

std::string Summary(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  const double mean = std::accumulate(us.begin(), us.end(), 0.0) / us.size();
  return fmt::format(
      "{{\"iterations\": {}, \"median_us\": {:.3f}, \"p99_us\": {:.3f}, \"mean_us\": {:.3f}, "
      "\"min_us\": {:.3f}, \"max_us\": {:.3f}}}",
      us.size(), us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)], mean,
      us.front(), us.back());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"host time to post one fenced op with the C++ client"};
  std::string address = "unix:///run/epd/epd.sock";
  int iterations = 2000, warmup = 200, rank = 0;
  app.add_option("--address", address, "daemon address");
  app.add_option("--iterations", iterations, "timed posts")->check(CLI::Range(1, 1000000));
  app.add_option("--warmup", warmup, "untimed posts first")->check(CLI::Range(0, 1000000));
  app.add_option("--rank", rank, "node rank (GPU) of the session");
  CLI11_PARSE(app, argc, argv);

  auto client = epd::Client::Connect(address);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto node = (*client)->GetNodeInfo();
  if (!node.ok()) return Fail(node.status(), "GetNodeInfo");
  const bool on_gpu = node->backend() == "cuda";
  auto session = (*client)->OpenSession(rank, "epd-post-bench");
  if (!session.ok()) return Fail(session.status(), "OpenSession");
  epd::Session& s = **session;

  epd::v1::GroupConfig config;
  config.set_name(fmt::format("post-bench-cpp-{}", rank));
  config.add_ranks(rank);
  config.set_world_size(1);
  config.set_experts(kExperts);
  config.set_hidden(kHidden);
  config.set_max_tokens_per_rank(kTokens);
  config.set_top_k(kTopK);
  config.set_dtype(epd::v1::DTYPE_FP32);
  if (auto created = s.CreateGroup(config); !created.ok()) return Fail(created.status(), "group");
  auto handle = s.CreateHandle(config.name());
  if (!handle.ok()) return Fail(handle.status(), "CreateHandle");

  // [idx: T*K int32 | x: T*H f32 | out: T*H f32], 16-byte aligned pieces.
  const size_t idx_bytes = kTokens * kTopK * 4, x_bytes = kTokens * kHidden * 4;
  const size_t total = idx_bytes + 2 * x_bytes;
  std::vector<int32_t> routing(kTokens * kTopK);
  for (size_t i = 0; i < routing.size(); ++i) routing[i] = static_cast<int32_t>(i % kExperts);
  epd::StatusOr<uint64_t> buffer = epd::InternalError("unset");
  std::unique_ptr<epd::SharedMemoryBuffer> shm;
#if EPD_WITH_CUDA
  void* device = nullptr;
  cudaStream_t stream = nullptr;
#endif
  if (on_gpu) {
#if EPD_WITH_CUDA
    if (cudaSetDevice(rank) != cudaSuccess || cudaMalloc(&device, total) != cudaSuccess ||
        !epd::cuda::FillNow(device, 0, total).ok() ||
        !epd::cuda::CopyNow(device, routing.data(), idx_bytes).ok() ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
      return Fail(epd::InternalError("CUDA setup failed"), "cuda");
    }
    auto source = epd::cuda::ExportDeviceTensor(device, total);
    if (!source.ok()) return Fail(source.status(), "ExportDeviceTensor");
    buffer = s.RegisterBuffer(*source);
#else
    return Fail(epd::UnimplementedError("built without CUDA"), "cuda backend");
#endif
  } else {
    auto created = epd::SharedMemoryBuffer::Create(total);
    if (!created.ok()) return Fail(created.status(), "shm");
    shm = std::move(*created);
    std::memcpy(shm->data(), routing.data(), idx_bytes);
    buffer = s.RegisterBuffer(shm->Source());
  }
  if (!buffer.ok()) return Fail(buffer.status(), "RegisterBuffer");
  const auto idx = epd::MakeTensorRef(*buffer, 0, epd::v1::DTYPE_INT32, {kTokens, kTopK});
  const auto x = epd::MakeTensorRef(*buffer, idx_bytes, epd::v1::DTYPE_FP32, {kTokens, kHidden});
  const auto out =
      epd::MakeTensorRef(*buffer, idx_bytes + x_bytes, epd::v1::DTYPE_FP32, {kTokens, kHidden});
  if (auto st = s.Update(handle->handle_id(), idx, std::nullopt, epd::BlockingOptions()); !st.ok())
    return Fail(st, "Update");
  if (auto st = s.Dispatch(handle->handle_id(), x, epd::BlockingOptions()); !st.ok())
    return Fail(st, "Dispatch");
  auto fence_in = s.CreateFence();
  auto fence_out = s.CreateFence();
  if (!fence_in.ok()) return Fail(fence_in.status(), "CreateFence");
  if (!fence_out.ok()) return Fail(fence_out.status(), "CreateFence");

  std::vector<double> post_us;
  post_us.reserve(iterations);
  for (int i = 0; i < warmup + iterations; ++i) {
    const uint64_t value = static_cast<uint64_t>(i) + 1;
    epd::v1::CombineRequest request;
    request.set_handle_id(handle->handle_id());
    *request.mutable_out() = out;
    *request.mutable_options() =
        epd::FencedOptions(fence_in->get(), value, fence_out->get(), value);
    const auto start = std::chrono::steady_clock::now();
    auto answer = s.CombineAsync(std::move(request));
#if EPD_WITH_CUDA
    if (on_gpu) {
      epd::Status signalled = epd::cuda::SignalFenceOnStream(**fence_in, value, stream);
      epd::Status waited = epd::cuda::WaitFenceOnStream(**fence_out, value, stream);
      if (!signalled.ok() || !waited.ok()) return Fail(signalled.ok() ? waited : signalled, "fence");
    }
#endif
    const auto posted = std::chrono::steady_clock::now();
    if (i >= warmup) post_us.push_back(std::chrono::duration<double, std::micro>(posted - start).count());
    if (!on_gpu) {
      if (auto st = (*fence_in)->Signal(value); !st.ok()) return Fail(st, "Signal");
      if (auto st = (*fence_out)->Wait(value, std::chrono::seconds(30)); !st.ok())
        return Fail(st, "Wait");
    }
#if EPD_WITH_CUDA
    if (on_gpu && cudaStreamSynchronize(stream) != cudaSuccess) {
      return Fail(epd::InternalError("cudaStreamSynchronize failed"), "stream");
    }
#endif
    if (auto st = s.Await(answer, "combine"); !st.ok()) return Fail(st, "combine");
  }
  std::printf("{\"client\": \"cpp\", \"backend\": \"%s\", \"post\": %s}\n", node->backend().c_str(),
              Summary(post_us).c_str());
  s.Close().IgnoreError();
  return 0;
}
