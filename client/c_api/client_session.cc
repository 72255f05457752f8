// C API: client, node info and stats, sessions, groups.
#include <cstddef>
#include <cstring>

#include <optional>

#include "client/c_api/internal.h"
#include "client/epd/data_path.h"

using epd::c_api::NullArgument;
using epd::c_api::Report;

namespace {

void CopyString(const std::string& from, char* to, size_t capacity) {
  const size_t n = std::min(from.size(), capacity - 1);
  std::memcpy(to, from.data(), n);
  to[n] = '\0';
}

std::chrono::milliseconds Ms(int64_t value, std::chrono::milliseconds fallback) {
  return value > 0 ? std::chrono::milliseconds(value) : fallback;
}

// Answers the signal fence of a failed op: host pages directly, device pages by a copy.
void ReleaseFence(epd_session* session, uint64_t fence_id, uint64_t value) {
  std::lock_guard lock(session->fences_mu);
  auto it = session->fences.find(fence_id);
  if (it == session->fences.end()) return;  // destroyed meanwhile: nobody can wait on it
  epd::Fence& fence = *it->second;
  epd::Status released =
      fence.on_device() ? epd::c_api::ReleaseDeviceFence(fence, value) : fence.Signal(value);
  released.IgnoreError();  // the op's own error is what the caller gets
}

// EPD_DATA_PATH_DEFAULT's choice on every GPU of the node (epd_c.h): frontend-launched only
// when every GPU would pick it.
int32_t DefaultDataPath(const epd::v1::NodeInfo& node) {
  if (node.gpus_size() == 0) return EPD_DATA_PATH_DAEMON_STREAMS;
  for (const auto& gpu : node.gpus()) {
    auto path = epd::ChooseDataPath(node, gpu.index(), epd::c_api::ClientHasCuda(), std::nullopt);
    if (!path.ok() || *path != epd::DataPath::kFrontendLaunched) {
      return EPD_DATA_PATH_DAEMON_STREAMS;
    }
  }
  return EPD_DATA_PATH_FRONTEND_LAUNCHED;
}

}  // namespace

extern "C" {

void epd_client_options_init(epd_client_options_t* options) {
  if (options == nullptr) return;
  const epd::ClientOptions defaults;
  *options = epd_client_options_t{};
  options->struct_size = sizeof(*options);
  options->connect_timeout_ms = defaults.connect_timeout.count();
  options->rpc_timeout_ms = defaults.rpc_timeout.count();
  options->op_timeout_ms = defaults.op_timeout.count();
  options->close_timeout_ms = defaults.close_timeout.count();
}

epd_status_t epd_client_connect(const char* address, const epd_client_options_t* options,
                                epd_client_t** client) {
  if (address == nullptr) return NullArgument("epd_client_connect", "address");
  if (client == nullptr) return NullArgument("epd_client_connect", "client");
  *client = nullptr;
  epd::ClientOptions cpp;
  if (options != nullptr) {
    if (options->struct_size < sizeof(epd_client_options_t)) {
      return Report(epd::InvalidArgumentError(
          "epd_client_connect: options.struct_size {} is smaller than {} (call "
          "epd_client_options_init)",
          options->struct_size, sizeof(epd_client_options_t)));
    }
    cpp.connect_timeout = Ms(options->connect_timeout_ms, cpp.connect_timeout);
    cpp.rpc_timeout = Ms(options->rpc_timeout_ms, cpp.rpc_timeout);
    cpp.op_timeout = Ms(options->op_timeout_ms, cpp.op_timeout);
    cpp.close_timeout = Ms(options->close_timeout_ms, cpp.close_timeout);
  }
  auto connected = epd::Client::Connect(address, cpp);
  if (!connected.ok()) return Report(connected.status());
  *client = new epd_client{std::move(*connected)};
  return EPD_OK;
}

void epd_client_destroy(epd_client_t* client) { delete client; }

epd_status_t epd_client_node_info(epd_client_t* client, epd_node_info_t* info) {
  if (client == nullptr) return NullArgument("epd_client_node_info", "client");
  if (info == nullptr) return NullArgument("epd_client_node_info", "info");
  auto node = client->client->GetNodeInfo();
  if (!node.ok()) return Report(node.status());
  *info = epd_node_info_t{};
  info->struct_size = sizeof(*info);
  CopyString(node->daemon_version(), info->daemon_version, sizeof(info->daemon_version));
  CopyString(node->backend(), info->backend, sizeof(info->backend));
  info->ranks = node->ranks();
  info->gpus = node->gpus_size();
  CopyString(node->nccl_version(), info->nccl_version, sizeof(info->nccl_version));
  info->groups = node->groups_size();
  info->default_data_path = DefaultDataPath(*node);
  return EPD_OK;
}

epd_status_t epd_client_stats(epd_client_t* client, epd_stats_t* stats) {
  if (client == nullptr) return NullArgument("epd_client_stats", "client");
  if (stats == nullptr) return NullArgument("epd_client_stats", "stats");
  auto got = client->client->GetStats();
  if (!got.ok()) return Report(got.status());
  *stats = epd_stats_t{};
  stats->struct_size = sizeof(*stats);
  stats->sessions_open = got->sessions_open();
  stats->sessions_total = got->sessions_total();
  stats->allocations = got->allocations();
  stats->frees = got->frees();
  stats->live_bytes = got->live_bytes();
  stats->update_completed = got->update().completed();
  stats->update_failed = got->update().failed();
  stats->dispatch_completed = got->dispatch().completed();
  stats->dispatch_failed = got->dispatch().failed();
  stats->combine_completed = got->combine().completed();
  stats->combine_failed = got->combine().failed();
  return EPD_OK;
}

epd_status_t epd_session_open(epd_client_t* client, int32_t rank, const char* client_name,
                              epd_session_t** session) {
  if (client == nullptr) return NullArgument("epd_session_open", "client");
  if (session == nullptr) return NullArgument("epd_session_open", "session");
  *session = nullptr;
  // What EPD_DATA_PATH_DEFAULT decides from (the backend, the GPUs' MPS state).
  auto node = client->client->GetNodeInfo();
  if (!node.ok()) return Report(node.status());
  auto opened = client->client->OpenSession(rank, client_name != nullptr ? client_name : "c-api");
  if (!opened.ok()) return Report(opened.status());
  auto* s = new epd_session;
  s->node = std::move(*node);
  s->session = std::move(*opened);
  s->options = client->client->options();
  s->reaper = std::make_unique<epd::c_api::OpReaper>(
      s->options.op_timeout,
      [s](uint64_t fence_id, uint64_t value) { ReleaseFence(s, fence_id, value); });
  s->poster = std::make_unique<epd::c_api::OpPoster>(*s->session, *s->reaper);
  *session = s;
  return EPD_OK;
}

uint64_t epd_session_id(const epd_session_t* session) {
  return session != nullptr ? session->session->id() : 0;
}

int32_t epd_session_rank(const epd_session_t* session) {
  return session != nullptr ? session->session->rank() : -1;
}

epd_status_t epd_session_close(epd_session_t* session) {
  if (session == nullptr) return NullArgument("epd_session_close", "session");
  // Ops queued before the close still reach the daemon (which then drains them).
  epd::Status flushed = session->poster->Flush(session->options.op_timeout);
  epd::Status closed = session->session->Close();
  return Report(!flushed.ok() ? flushed : closed);
}

void epd_session_destroy(epd_session_t* session) {
  if (session == nullptr) return;
  // Queued ops are posted first; ending the stream then answers every pending op, so the
  // reaper's join below cannot wait long.
  session->poster.reset();
  session->session->Close().IgnoreError();
  session->reaper.reset();
  delete session;
}

epd_status_t epd_session_poll(epd_session_t* session) {
  if (session == nullptr) return NullArgument("epd_session_poll", "session");
  return Report(session->reaper->TakeError());
}

epd_status_t epd_session_sync(epd_session_t* session, int64_t timeout_ms) {
  if (session == nullptr) return NullArgument("epd_session_sync", "session");
  const std::chrono::milliseconds timeout(std::max<int64_t>(0, timeout_ms));
  epd::Status drained = session->poster->Flush(timeout);
  if (drained.ok()) drained = session->reaper->Drain(timeout);
  epd::Status error = session->reaper->TakeError();
  return Report(!error.ok() ? error : drained);
}

void epd_group_config_init(epd_group_config_t* config) {
  if (config == nullptr) return;
  *config = epd_group_config_t{};
  config->struct_size = sizeof(*config);
}

epd_status_t epd_group_create(epd_session_t* session, const epd_group_config_t* config,
                              int32_t persistent, int32_t* filled_capacity) {
  if (session == nullptr) return NullArgument("epd_group_create", "session");
  if (config == nullptr) return NullArgument("epd_group_create", "config");
  // Version-1 callers end at expert_capacity (plus tail padding, which covers dispatch_dtype:
  // so the fields appended since are read only when the struct reaches past scale_format).
  constexpr size_t kVersion1Size = offsetof(epd_group_config_t, dispatch_dtype);
  if (config->struct_size < kVersion1Size) {
    return Report(epd::InvalidArgumentError(
        "epd_group_create: config.struct_size {} is smaller than {} (call epd_group_config_init)",
        config->struct_size, kVersion1Size));
  }
  const bool has_dispatch_format =
      config->struct_size >= offsetof(epd_group_config_t, scale_format) + sizeof(int32_t);
  const bool has_high_throughput =
      config->struct_size >= offsetof(epd_group_config_t, sm_budget) + sizeof(int32_t);
  const bool has_spans_nodes =
      config->struct_size >= offsetof(epd_group_config_t, spans_nodes) + sizeof(int32_t);
  epd::v1::GroupConfig cpp;
  cpp.set_name(config->name != nullptr ? config->name : "");
  cpp.set_world_size(config->world_size);
  if (config->ranks != nullptr) {
    for (int32_t i = 0; i < config->num_ranks; ++i) cpp.add_ranks(config->ranks[i]);
  }
  cpp.set_experts(config->experts);
  cpp.set_hidden(config->hidden);
  cpp.set_max_tokens_per_rank(config->max_tokens_per_rank);
  cpp.set_top_k(config->top_k);
  cpp.set_dtype(static_cast<epd::v1::DType>(config->dtype));
  cpp.set_algorithm(static_cast<epd::v1::Algorithm>(config->algorithm));
  cpp.set_layout(static_cast<epd::v1::Layout>(config->layout));
  cpp.set_expert_capacity(config->expert_capacity);
  if (has_dispatch_format) {
    cpp.set_dispatch_dtype(static_cast<epd::v1::DType>(config->dispatch_dtype));
    cpp.set_scale_format(static_cast<epd::v1::ScaleFormat>(config->scale_format));
  }
  if (has_high_throughput) {
    cpp.set_recv_capacity(config->recv_capacity);
    cpp.set_sm_budget(config->sm_budget);
  }
  if (has_spans_nodes) cpp.set_spans_nodes(config->spans_nodes != 0);
  auto created = session->session->CreateGroup(cpp, persistent != 0);
  if (!created.ok()) return Report(created.status());
  if (filled_capacity != nullptr) {
    *filled_capacity = created->algorithm() == epd::v1::ALGORITHM_HIGH_THROUGHPUT
                           ? created->recv_capacity()
                           : created->expert_capacity();
  }
  return EPD_OK;
}

epd_status_t epd_group_destroy(epd_session_t* session, const char* name) {
  if (session == nullptr) return NullArgument("epd_group_destroy", "session");
  if (name == nullptr) return NullArgument("epd_group_destroy", "name");
  return Report(session->session->DestroyGroup(name));
}

}  // extern "C"
