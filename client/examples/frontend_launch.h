// The example frontend's frontend-launched data path (client/epd/data_path.h): the rank's own
// stream launches update, dispatch and combine through FrontendOps against the handle's
// daemon-owned memory. Builds with CUDA only; elsewhere Create is UNIMPLEMENTED.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>

#include "client/epd/handle_view.h"
#include "client/epd/session.h"
#include "client/examples/frontend_memory.h"

namespace epd::example {

// Where the rank's tensors lie in its FrontendMemory.
struct LaunchTensors {
  size_t x = 0, topk = 0, weights = 0, out = 0;
  bool int64_topk = false;
  // After one eager layer, capture update + dispatch and combine in two CUDA graphs at the
  // first layer of each token count, then replay them: the layer's inputs are rewritten in
  // place between replays.
  bool graphs = false;
};

class FrontendLaunch {
 public:
  virtual ~FrontendLaunch() = default;
  // One layer: update + dispatch, wait, `experts` (on the received rows), combine, wait;
  // device errors as the daemon words them. Every wait is bounded by `timeout`.
  virtual Status RunLayer(int num_tokens, const std::function<Status()>& experts) = 0;
  // Layers that replayed graphs captured by an earlier layer (LaunchTensors::graphs).
  virtual int replayed_layers() const = 0;
};

// Attaches the data plane (retrying while peers' handles do not exist yet, up to `timeout`)
// and maps it; `memory` is the rank's device memory holding `tensors`.
StatusOr<std::unique_ptr<FrontendLaunch>> CreateFrontendLaunch(Session& session,
                                                               const HandleView& view,
                                                               FrontendMemory& memory,
                                                               LaunchTensors tensors,
                                                               std::chrono::milliseconds timeout);

}  // namespace epd::example
