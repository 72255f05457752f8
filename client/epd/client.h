// epd client library: the C++ API of the epd daemon (proto/epd/v1/epd.proto) for inference
// frontends.
//
//   auto client = epd::Client::Connect("unix:///run/epd/epd.sock");   // StatusOr
//   auto session = (*client)->OpenSession(rank, "my-frontend");       // one per rank
//   session->CreateGroup(config);  auto info = session->CreateHandle("moe0");
//   auto view = epd::HandleView::Open(*info);                          // receive region
//   session->Update(...); session->Dispatch(...); /* experts on view */ session->Combine(...);
//
// Every call returns epd::Status / StatusOr carrying the daemon's code and message. Tensors
// never travel in messages: frontends register memory (SharedMemoryBuffer on the cpu backend,
// CUDA IPC on the cuda backend: client/epd/cuda.h) and name it with TensorRefs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "client/epd/fence.h"
#include "client/epd/handle_view.h"
#include "client/epd/options.h"
#include "client/epd/session.h"
#include "client/epd/shared_memory.h"
#include "client/epd/tensor.h"
#include "common/status.h"
#include "epd/v1/epd.grpc.pb.h"

namespace grpc {
class Channel;
}

namespace epd {

class Client {
 public:
  // Connects to "unix:///path" or "host:port" and waits until the channel is READY.
  static StatusOr<std::unique_ptr<Client>> Connect(const std::string& address,
                                                   ClientOptions options = {});

  const std::string& address() const { return address_; }
  const ClientOptions& options() const { return options_; }

  StatusOr<v1::NodeInfo> GetNodeInfo();
  StatusOr<v1::Stats> GetStats();
  StatusOr<std::vector<v1::GroupSummary>> ListGroups();
  // `owner` owns a non-persistent group (it is destroyed when that session ends).
  StatusOr<v1::GroupConfig> CreateGroup(const v1::GroupConfig& config, bool persistent,
                                        const Session* owner);
  Status DestroyGroup(const std::string& name, const Session& session);

  // Opens a streaming session for node rank `rank`; it ends when the Session is closed or
  // destroyed. A Session may outlive its Client.
  StatusOr<std::unique_ptr<Session>> OpenSession(int rank, const std::string& client_name);

  // The generated stub, for calls this class does not wrap (and for tests of raw requests).
  v1::Epd::Stub& stub() { return *stub_; }

 private:
  Client() = default;

  std::string address_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<v1::Epd::Stub> stub_;
};

}  // namespace epd
