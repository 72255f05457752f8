#include "daemon/app/startup.h"

#include <signal.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/backends/cpu/stale_shm.h"
#include "daemon/core/log.h"

#ifdef EPD_WITH_CUDA
#include "daemon/backends/cuda/cuda_backend.h"
#endif

namespace epd::app {

StatusOr<std::unique_ptr<Backend>> CreateBackend(const DaemonConfig& config, int fatal_signal,
                                                 const JoinCluster& join,
                                                 ClusterAttachment* joined) {
  ClusterAttachment attachment;
  auto join_with = [&](int ranks) -> Status {
    if (!join) return OkStatus();
    EPD_ASSIGN_OR_RETURN(attachment, join(ranks));
    if (joined != nullptr) *joined = attachment;
    return OkStatus();
  };
  BackendKind kind = config.backend;
  if (kind == BackendKind::kAuto) {
    kind = BackendKind::kCpu;
#ifdef EPD_WITH_CUDA
    int devices = 0;
    if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) kind = BackendKind::kCuda;
#endif
    EPD_LOG(kCore, info, "backend = auto: using the {} backend", BackendKindName(kind));
  }
  if (kind == BackendKind::kCuda) {
#ifdef EPD_WITH_CUDA
    CudaBackendOptions options;
    options.devices = config.gpus;
    options.op_timeout = config.op_timeout;
    options.on_fatal_error = [fatal_signal](const Status& status) {
      EPD_LOG(kCore, critical, "fatal device error, stopping: {}", status.ToString());
      kill(getpid(), fatal_signal);
    };
    EPD_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateCudaBackend(options));
    // NOTE: joined after the backend exists: the join checks the node's rank count.
    EPD_RETURN_IF_ERROR(join_with(backend->num_ranks()));
    AttachCudaCluster(*backend, attachment.store);
    return backend;
#else
    (void)fatal_signal;
    return InvalidArgumentError(
        "backend = cuda, but this epd was built without CUDA (-DEPD_WITH_CUDA=OFF); use "
        "--backend cpu");
#endif
  }
  if (!config.gpus.empty()) EPD_LOG(kCore, warn, "gpus is ignored by the cpu backend");
  ReclaimStaleShm();  // what a killed daemon left in /dev/shm
  EPD_RETURN_IF_ERROR(join_with(config.cpu_ranks));
  CpuBackendOptions options{config.cpu_ranks, config.op_timeout};
  options.cluster = attachment.store;
  return CreateCpuBackend(options, DefaultExportedShmGroup());
}

bool IsConfigProblem(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kResourceExhausted:
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kPermissionDenied:
      return true;
    default:
      return false;
  }
}

Status CreatePersistentObjects(Engine& engine, const DaemonConfig& config) {
  for (size_t i = 0; i < config.groups.size(); ++i) {
    const auto& decl = config.groups[i];
    const std::string where = fmt::format("group[{}] (name = \"{}\")", i, decl.config.name);
    EPD_RETURN_IF_ERROR(
        engine.CreateGroup(std::nullopt, decl.config, /*persistent=*/true).WithContext(where));
    for (size_t h = 0; h < decl.handles.size(); ++h) {
      for (int rank : decl.handles[h].ranks) {
        EPD_RETURN_IF_ERROR(
            engine.CreatePersistentHandle(decl.config.name, rank, decl.handles[h].name)
                .WithContext(fmt::format("{}.handle[{}] (name = \"{}\", rank {})", where, h,
                                         decl.handles[h].name, rank)));
      }
    }
    EPD_LOG(kCore, info, "persistent {} with {} named handle(s)", decl.config.ToString(),
            decl.handles.size());
  }
  return OkStatus();
}

}  // namespace epd::app
