#include "daemon/backends/cuda/reclaimer.h"

#include <algorithm>
#include <cstring>

#include "common/cuda_check.h"
#include "common/cuda_device.h"
#include "daemon/core/log.h"

namespace epd::cuda {
namespace {

void CloseNow(int device, char* base) {
  cudaSetDevice(device);
  if (cudaError_t e = cudaIpcCloseMemHandle(base); e != cudaSuccess) {
    EPD_LOG(kIpc, warn, "cudaIpcCloseMemHandle on GPU {}: {}", device, cudaGetErrorString(e));
  }
}

// Completes the frees queued on `device`'s release stream: a stream-ordered free of cudaMalloc
// memory gives it back to the driver only at a synchronize call, not when the stream reaches
// it (measured on an H200: 1 GiB stayed in use after the stream ran the free, and after a trim
// of the default pool, until the stream was synchronized). Quick once the stream ran.
bool CompleteFrees(int device, cudaStream_t release) {
  cudaSetDevice(device);
  if (cudaError_t e = cudaStreamSynchronize(release); e != cudaSuccess) {
    cudaGetLastError();
    EPD_LOG(kCuda, warn, "completing the frees on GPU {}: {}", device, cudaGetErrorString(e));
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<Reclaimer> Reclaimer::Shared(std::chrono::milliseconds free_wait) {
  static std::mutex mu;
  static std::weak_ptr<Reclaimer> shared;
  std::lock_guard lock(mu);
  std::shared_ptr<Reclaimer> reclaimer = shared.lock();
  if (reclaimer == nullptr) {
    reclaimer = std::make_shared<Reclaimer>(free_wait);
    shared = reclaimer;
  }
  int64_t wait = reclaimer->free_wait_ms_.load();
  while (wait < free_wait.count() &&
         !reclaimer->free_wait_ms_.compare_exchange_weak(wait, free_wait.count())) {
  }
  return reclaimer;
}

Reclaimer::Reclaimer(std::chrono::milliseconds free_wait)
    : free_wait_ms_(free_wait.count()), thread_([this] { Run(); }) {}

Reclaimer::~Reclaimer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (auto& [key, pending] : pending_) CloseNow(key.second, pending.base);
  for (auto& [bytes, data] : host_cache_) cudaFreeHost(data);
  for (auto& [stream, registered] : streams_) cudaEventDestroy(registered.last_work);
  for (auto& [device, stream] : release_streams_) {
    cudaSetDevice(device);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
}

// NOTE: AddStream, FreeDevice, AwaitFrees and CloseMapping run on other components' threads,
// so they leave the caller's current device as they found it (OnDevice).
Status Reclaimer::AddStream(int device, cudaStream_t stream) {
  cudaEvent_t event = nullptr;
  EPD_RETURN_IF_ERROR(OnDevice(device, [&]() -> Status {
    EPD_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return OkStatus();
  }));
  std::lock_guard lock(mu_);
  streams_[stream] = Registered{device, event};
  return OkStatus();
}

void Reclaimer::RemoveStream(cudaStream_t stream) {
  std::lock_guard lock(mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  cudaEventDestroy(it->second.last_work);
  streams_.erase(it);
}

StatusOr<cudaStream_t> Reclaimer::ReleaseStreamLocked(int device) {
  if (auto it = release_streams_.find(device); it != release_streams_.end()) return it->second;
  EPD_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  EPD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  release_streams_[device] = stream;
  return stream;
}

void Reclaimer::FreeDevice(int device, void* data) {
  std::lock_guard lock(mu_);
  const Status ordered = OnDevice(device, [&]() -> Status {
    EPD_ASSIGN_OR_RETURN(cudaStream_t release, ReleaseStreamLocked(device));
    for (auto& [stream, registered] : streams_) {
      EPD_CUDA_CHECK(cudaSetDevice(registered.device));
      EPD_CUDA_CHECK(cudaEventRecord(registered.last_work, stream));
      EPD_CUDA_CHECK(cudaSetDevice(device));
      EPD_CUDA_CHECK(cudaStreamWaitEvent(release, registered.last_work, 0));
    }
    EPD_CUDA_CHECK(cudaSetDevice(device));
    EPD_CUDA_CHECK(cudaFreeAsync(data, release));
    frees_queued_.try_emplace(device, std::chrono::steady_clock::now());
    wake_.notify_all();
    return OkStatus();
  });
  if (!ordered.ok()) {
    // Only with a broken context (a sticky error), where nothing runs any more to wait for.
    EPD_LOG(kCuda, error, "stream-ordered free on GPU {} failed ({}); freeing at once", device,
            ordered.message());
    (void)OnDevice(device, [&]() -> Status {
      EPD_CUDA_CHECK(cudaFree(data));
      return OkStatus();
    });
  }
}

bool Reclaimer::AwaitFrees(int device) {
  cudaStream_t release = nullptr;
  {
    std::lock_guard lock(mu_);
    auto it = release_streams_.find(device);
    if (it == release_streams_.end() || frees_queued_.erase(device) == 0) return false;
    release = it->second;
  }
  // NOTE: polled, not cudaStreamSynchronize, so the wait is bounded like every other.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(free_wait_ms_.load());
  for (;;) {
    const cudaError_t e = cudaStreamQuery(release);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady || std::chrono::steady_clock::now() > deadline) {
      cudaGetLastError();
      std::lock_guard lock(mu_);  // still queued: the reclaimer's thread completes them later
      frees_queued_.try_emplace(device, std::chrono::steady_clock::now());
      wake_.notify_all();
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return OnDevice(device,
                  [&] {
                    return CompleteFrees(device, release) ? OkStatus()
                                                          : InternalError("frees not completed");
                  })
      .ok();
}

void* Reclaimer::TakeHost(size_t bytes) {
  std::lock_guard lock(mu_);
  auto it = host_cache_.find(bytes);
  if (it == host_cache_.end()) return nullptr;
  void* data = it->second;
  host_cache_.erase(it);
  std::memset(data, 0, bytes);
  return data;
}

void Reclaimer::GiveHost(void* data, size_t bytes) {
  std::lock_guard lock(mu_);
  host_cache_.emplace(bytes, data);
}

void Reclaimer::CloseMapping(const std::string& handle, int device, char* base, size_t bytes) {
  {
    std::lock_guard lock(mu_);
    const auto [it, added] = pending_.try_emplace(
        MappingKey(handle, device), Pending{base, bytes, std::chrono::steady_clock::now()});
    if (added) {
      wake_.notify_all();
      return;
    }
  }
  // NOTE: one mapping per (handle, device) lives at a time (ImportCache), so this is not
  // reached; were it, closing at once is what the daemon always did.
  (void)OnDevice(device, [&] {
    CloseNow(device, base);
    return OkStatus();
  });
}

std::optional<std::pair<char*, size_t>> Reclaimer::Revive(const std::string& handle, int device) {
  std::lock_guard lock(mu_);
  auto it = pending_.find(MappingKey(handle, device));
  if (it == pending_.end()) return std::nullopt;
  std::pair<char*, size_t> mapping(it->second.base, it->second.bytes);
  pending_.erase(it);
  return mapping;
}

size_t Reclaimer::pending_closes() const {
  std::lock_guard lock(mu_);
  return pending_.size();
}

bool Reclaimer::StreamsIdleLocked() const {
  auto idle = [](cudaStream_t stream) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaErrorNotReady) cudaGetLastError();
    return e == cudaSuccess;
  };
  for (const auto& [stream, registered] : streams_) {
    if (!idle(stream)) return false;
  }
  // A free waiting there for a lane's work counts as work the close would wait for.
  for (const auto& [device, stream] : release_streams_) {
    if (!idle(stream)) return false;
  }
  return true;
}

bool Reclaimer::DrainedLocked() const {
  const auto until = std::chrono::steady_clock::now() + kDrainWindow;
  for (;;) {
    if (StreamsIdleLocked()) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void Reclaimer::Run() {
  std::unique_lock lock(mu_);
  auto backoff = kFirstBackoff;
  while (!stopping_) {
    if (pending_.empty() && frees_queued_.empty()) {
      backoff = kFirstBackoff;
      wake_.wait(lock, [&] { return stopping_ || !pending_.empty() || !frees_queued_.empty(); });
      continue;
    }
    std::vector<std::pair<int, char*>> closing;
    std::vector<std::pair<int, cudaStream_t>> completing;
    bool closed = false;
    {
      // NOTE: while the gate is held nothing is enqueued: idle now means idle until the
      // closes and synchronizes below return, so they wait for nothing. The release streams
      // are idle too: every free queued so far has run and completes at once.
      std::unique_lock gate(launch_gate_, std::try_to_lock);
      if (gate.owns_lock() && DrainedLocked()) {
        for (auto& [key, pending] : pending_) CloseNow(key.second, pending.base);
        pending_.clear();
        for (const auto& [device, since] : frees_queued_) {
          CompleteFrees(device, release_streams_[device]);
        }
        frees_queued_.clear();
        closed = true;
      }
    }
    if (!closed) {
      const auto now = std::chrono::steady_clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (now - it->second.since < kMaxCloseDeferral) {
          ++it;
          continue;
        }
        closing.emplace_back(it->first.second, it->second.base);
        it = pending_.erase(it);
      }
      for (auto it = frees_queued_.begin(); it != frees_queued_.end();) {
        if (now - it->second < kMaxCloseDeferral) {
          ++it;
          continue;
        }
        completing.emplace_back(it->first, release_streams_[it->first]);
        it = frees_queued_.erase(it);
      }
    }
    if (!closing.empty() || !completing.empty()) {
      // Past the deferral: close and complete anyway, outside the lock, as a plain release
      // would.
      EPD_LOG(kIpc, warn,
              "{} IPC mapping(s) and the freed memory of {} GPU(s) released {} s ago given back "
              "while the GPUs were busy; launches wait until the running kernels end",
              closing.size(), completing.size(), kMaxCloseDeferral.count());
      lock.unlock();
      for (const auto& [device, base] : closing) CloseNow(device, base);
      for (const auto& [device, release] : completing) CompleteFrees(device, release);
      lock.lock();
    }
    // Each window given up delays ops a little: the next try comes later and later.
    const auto wait = closed ? std::chrono::milliseconds(0) : backoff;
    if (!closed) backoff = std::min(backoff * 2, kMaxBackoff);
    wake_.wait_for(lock, wait, [&] { return stopping_; });
  }
}

}  // namespace epd::cuda
