#include "client/epd/session.h"

#include "client/epd/data_path.h"
#include "client/rpc_status.h"
#include "client/session_stream.h"

namespace epd {

namespace {

std::future<Status> Ready(Status status) {
  std::promise<Status> promise;
  promise.set_value(std::move(status));
  return promise.get_future();
}

}  // namespace

template <typename Request, typename Response>
Status Session::Call(grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                           Response*),
                     const Request& request, Response* response) const {
  return internal::CallUnary(*stub_, method, request, response, options_.rpc_timeout, secret_);
}

Session::~Session() { Close().IgnoreError(); }

Status Session::Close() {
  if (closed_.exchange(true)) return OkStatus();
  return stream_->Close(options_.close_timeout);
}

Status Session::CheckOpen() const {
  if (closed_) return FailedPreconditionError("session {} (rank {}) is closed", id_, rank_);
  return OkStatus();
}

StatusOr<uint64_t> Session::RegisterBuffer(const v1::MemorySource& source) {
  v1::RegisterBufferRequest request;
  request.set_session_id(id_);
  *request.mutable_source() = source;
  v1::RegisterBufferResponse response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::RegisterBuffer, request, &response));
  return response.buffer_id();
}

Status Session::ReleaseBuffer(uint64_t buffer_id) {
  v1::ReleaseBufferRequest request;
  request.set_session_id(id_);
  request.set_buffer_id(buffer_id);
  v1::ReleaseBufferResponse response;
  return Call(&v1::Epd::Stub::ReleaseBuffer, request, &response);
}

StatusOr<std::unique_ptr<Fence>> Session::CreateFence() {
  v1::CreateFenceRequest request;
  request.set_session_id(id_);
  v1::CreateFenceResponse response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::CreateFence, request, &response));
  return Fence::Open(response);
}

Status Session::DestroyFence(uint64_t fence_id) {
  v1::DestroyFenceRequest request;
  request.set_session_id(id_);
  request.set_fence_id(fence_id);
  v1::DestroyFenceResponse response;
  return Call(&v1::Epd::Stub::DestroyFence, request, &response);
}

StatusOr<v1::GroupConfig> Session::CreateGroup(const v1::GroupConfig& config, bool persistent) {
  v1::CreateGroupRequest request;
  request.set_session_id(id_);
  *request.mutable_config() = config;
  request.set_persistent(persistent);
  v1::CreateGroupResponse response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::CreateGroup, request, &response));
  return response.config();
}

Status Session::DestroyGroup(const std::string& name) {
  v1::DestroyGroupRequest request;
  request.set_session_id(id_);
  request.set_name(name);
  v1::DestroyGroupResponse response;
  return Call(&v1::Epd::Stub::DestroyGroup, request, &response);
}

StatusOr<v1::HandleInfo> Session::CreateHandle(const std::string& group, const std::string& name,
                                               bool persistent) {
  v1::CreateHandleRequest request;
  request.set_group(group);
  request.set_name(name);
  request.set_persistent(persistent);
  return CreateHandle(std::move(request));
}

StatusOr<v1::HandleInfo> Session::CreateHandle(v1::CreateHandleRequest request) {
  request.set_session_id(id_);
  v1::HandleInfo response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::CreateHandle, request, &response));
  return response;
}

StatusOr<v1::HandleInfo> Session::AttachHandle(const std::string& name) {
  v1::AttachHandleRequest request;
  request.set_session_id(id_);
  request.set_name(name);
  v1::HandleInfo response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::AttachHandle, request, &response));
  return response;
}

StatusOr<v1::DataPlaneInfo> Session::AttachDataPlane(uint64_t handle_id, uint64_t reset_epoch) {
  v1::AttachDataPlaneRequest request;
  request.set_session_id(id_);
  request.set_handle_id(handle_id);
  request.set_reset_epoch(reset_epoch);
  v1::DataPlaneInfo response;
  EPD_RETURN_IF_ERROR(Call(&v1::Epd::Stub::AttachDataPlane, request, &response));
  EPD_RETURN_IF_ERROR(ValidateDataPlaneInfo(response));
  return response;
}

Status Session::DestroyHandle(uint64_t handle_id) {
  v1::DestroyHandleRequest request;
  request.set_session_id(id_);
  request.set_handle_id(handle_id);
  v1::DestroyHandleResponse response;
  return Call(&v1::Epd::Stub::DestroyHandle, request, &response);
}

std::future<Status> Session::Post(v1::SessionRequest request) {
  if (Status open = CheckOpen(); !open.ok()) return Ready(open);
  auto answer = std::make_shared<std::promise<Status>>();
  std::future<Status> future = answer->get_future();
  stream_->Send(std::move(request), [answer](const v1::SessionResponse& response) {
    answer->set_value(response.code() == 0
                          ? OkStatus()
                          : Status(static_cast<StatusCode>(response.code()), response.message()));
  });
  return future;
}

std::future<Status> Session::UpdateAsync(v1::UpdateHandleRequest request) {
  request.set_session_id(id_);
  v1::SessionRequest wrapped;
  *wrapped.mutable_update() = std::move(request);
  return Post(std::move(wrapped));
}

std::future<Status> Session::DispatchAsync(v1::DispatchRequest request) {
  request.set_session_id(id_);
  v1::SessionRequest wrapped;
  *wrapped.mutable_dispatch() = std::move(request);
  return Post(std::move(wrapped));
}

std::future<Status> Session::CombineAsync(v1::CombineRequest request) {
  request.set_session_id(id_);
  v1::SessionRequest wrapped;
  *wrapped.mutable_combine() = std::move(request);
  return Post(std::move(wrapped));
}

Status Session::Await(std::future<Status>& answer, std::string_view what) const {
  if (answer.wait_for(options_.op_timeout) != std::future_status::ready) {
    return DeadlineExceededError("session {} (rank {}): no answer to {} within {} ms", id_, rank_,
                                 what, options_.op_timeout.count());
  }
  return answer.get();
}

Status Session::Update(uint64_t handle_id, const v1::TensorRef& topk_idx,
                       const std::optional<v1::TensorRef>& weights, const v1::OpOptions& options) {
  v1::UpdateHandleRequest request;
  request.set_handle_id(handle_id);
  *request.mutable_topk_idx() = topk_idx;
  if (weights.has_value()) *request.mutable_topk_weights() = *weights;
  *request.mutable_options() = options;
  auto answer = UpdateAsync(std::move(request));
  return Await(answer, "update");
}

Status Session::Dispatch(uint64_t handle_id, const v1::TensorRef& x, const v1::OpOptions& options) {
  v1::DispatchRequest request;
  request.set_handle_id(handle_id);
  *request.mutable_x() = x;
  *request.mutable_options() = options;
  auto answer = DispatchAsync(std::move(request));
  return Await(answer, "dispatch");
}

Status Session::Combine(uint64_t handle_id, const v1::TensorRef& out,
                        const std::optional<v1::TensorRef>& expert_out,
                        const v1::OpOptions& options) {
  v1::CombineRequest request;
  request.set_handle_id(handle_id);
  *request.mutable_out() = out;
  if (expert_out.has_value()) *request.mutable_expert_out() = *expert_out;
  *request.mutable_options() = options;
  auto answer = CombineAsync(std::move(request));
  return Await(answer, "combine");
}

}  // namespace epd
