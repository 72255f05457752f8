#include "client/epd/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "client/rpc_status.h"
#include "client/session_stream.h"
#include "common/unix_socket_probe.h"

namespace epd {

using internal::CallUnary;

StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& address,
                                                  ClientOptions options) {
  if (address.empty()) return InvalidArgumentError("daemon address must not be empty");
  // A unix socket that is missing, forbidden or dead is reported at once, and why, instead of
  // after the connect timeout.
  if (const std::string path = UnixSocketPathOf(address); !path.empty()) {
    EPD_RETURN_IF_ERROR(ProbeUnixSocket(path).WithContext(
        fmt::format("cannot connect to the epd daemon at '{}'", address)));
  }
  auto client = std::unique_ptr<Client>(new Client());
  client->address_ = address;
  client->options_ = options;
  client->channel_ = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  if (!client->channel_->WaitForConnected(std::chrono::system_clock::now() +
                                          options.connect_timeout)) {
    return UnavailableError("cannot connect to the epd daemon at '{}' within {} ms", address,
                            options.connect_timeout.count());
  }
  client->stub_ = std::shared_ptr<v1::Epd::Stub>(v1::Epd::NewStub(client->channel_));
  return client;
}

StatusOr<v1::NodeInfo> Client::GetNodeInfo() {
  v1::NodeInfo response;
  EPD_RETURN_IF_ERROR(CallUnary(*stub_, &v1::Epd::Stub::GetNodeInfo, v1::GetNodeInfoRequest(),
                                &response, options_.rpc_timeout));
  return response;
}

StatusOr<v1::Stats> Client::GetStats() {
  v1::Stats response;
  EPD_RETURN_IF_ERROR(CallUnary(*stub_, &v1::Epd::Stub::GetStats, v1::GetStatsRequest(), &response,
                                options_.rpc_timeout));
  return response;
}

StatusOr<std::vector<v1::GroupSummary>> Client::ListGroups() {
  std::vector<v1::GroupSummary> groups;
  v1::ListGroupsRequest request;
  do {  // the daemon answers in bounded pages
    v1::ListGroupsResponse response;
    EPD_RETURN_IF_ERROR(CallUnary(*stub_, &v1::Epd::Stub::ListGroups, request, &response,
                                  options_.rpc_timeout));
    groups.insert(groups.end(), response.groups().begin(), response.groups().end());
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return groups;
}

StatusOr<v1::GroupConfig> Client::CreateGroup(const v1::GroupConfig& config, bool persistent,
                                              const Session* owner) {
  v1::CreateGroupRequest request;
  if (owner != nullptr) request.set_session_id(owner->id());
  *request.mutable_config() = config;
  request.set_persistent(persistent);
  v1::CreateGroupResponse response;
  EPD_RETURN_IF_ERROR(CallUnary(*stub_, &v1::Epd::Stub::CreateGroup, request, &response,
                                options_.rpc_timeout,
                                owner != nullptr ? owner->secret() : std::string_view()));
  return response.config();
}

Status Client::DestroyGroup(const std::string& name, const Session& session) {
  v1::DestroyGroupRequest request;
  request.set_session_id(session.id());
  request.set_name(name);
  v1::DestroyGroupResponse response;
  return CallUnary(*stub_, &v1::Epd::Stub::DestroyGroup, request, &response, options_.rpc_timeout,
                   session.secret());
}

StatusOr<std::unique_ptr<Session>> Client::OpenSession(int rank, const std::string& client_name) {
  v1::OpenSessionRequest open;
  open.set_rank(rank);
  open.set_client_name(client_name);
  v1::OpenSessionResponse opened;
  EPD_ASSIGN_OR_RETURN(auto stream,
                       internal::SessionStream::Open(stub_, open, options_.rpc_timeout, &opened));
  auto session = std::unique_ptr<Session>(new Session());
  session->stub_ = stub_;
  session->options_ = options_;
  session->stream_ = std::move(stream);
  session->id_ = opened.session_id();
  session->secret_ = opened.session_secret();
  session->rank_ = opened.rank();
  return session;
}

}  // namespace epd
