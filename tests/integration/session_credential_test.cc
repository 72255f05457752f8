// What a call must present to use a session, against the real daemon: every unary call that
// names a session carries the session's secret in header epd-session-secret; a missing,
// malformed or wrong one (another session's included) is PERMISSION_DENIED naming the header;
// the honest client and the sessionless calls need nothing more. Over TCP, where the daemon
// cannot tell processes apart, the secret is what keeps a listed session id useless.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <functional>
#include <regex>
#include <string>
#include <vector>

#include "client/epd/shared_memory.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using Secrets = std::initializer_list<std::string_view>;

// One unary call naming `session`, made with the headers it is given.
struct SessionCall {
  std::string method;
  std::function<Status(Secrets)> call;
};

v1::GroupConfig SmallGroup(const std::string& name) {
  v1::GroupConfig config;
  config.set_name(name);
  config.set_world_size(1);
  config.set_experts(2);
  config.set_hidden(8);
  config.set_max_tokens_per_rank(4);
  config.set_top_k(1);
  return config;
}

v1::TensorRef Tensor(uint64_t buffer_id, v1::DType dtype) {
  v1::TensorRef tensor;
  tensor.set_buffer_id(buffer_id);
  tensor.set_dtype(dtype);
  tensor.add_shape(1);
  tensor.add_shape(1);
  return tensor;
}

// Every unary method that names a session, each with a request the daemon translates, so the
// answer is about the credential (with the right one: whatever the request deserves).
// CloseSession is left out: with the right secret it would end the session.
std::vector<SessionCall> CallsNaming(v1::Epd::Stub& stub, uint64_t session,
                                     const v1::MemorySource& shm) {
  std::vector<SessionCall> calls;
  auto add = [&](std::string method, auto rpc, auto request, auto response) {
    request.set_session_id(session);
    calls.push_back({std::move(method), [&stub, rpc, request, response](Secrets secrets) mutable {
                       return RawCall(stub, rpc, request, &response, secrets);
                     }});
  };
  v1::RegisterBufferRequest register_buffer;
  *register_buffer.mutable_source() = shm;
  add("RegisterBuffer", &v1::Epd::Stub::RegisterBuffer, register_buffer,
      v1::RegisterBufferResponse());
  v1::ReleaseBufferRequest release_buffer;
  release_buffer.set_buffer_id(999);
  add("ReleaseBuffer", &v1::Epd::Stub::ReleaseBuffer, release_buffer, v1::ReleaseBufferResponse());
  add("CreateFence", &v1::Epd::Stub::CreateFence, v1::CreateFenceRequest(),
      v1::CreateFenceResponse());
  v1::DestroyFenceRequest destroy_fence;
  destroy_fence.set_fence_id(999);
  add("DestroyFence", &v1::Epd::Stub::DestroyFence, destroy_fence, v1::DestroyFenceResponse());
  v1::CreateGroupRequest create_group;
  *create_group.mutable_config() = SmallGroup(UniqueName("credential"));
  add("CreateGroup", &v1::Epd::Stub::CreateGroup, create_group, v1::CreateGroupResponse());
  v1::DestroyGroupRequest destroy_group;
  destroy_group.set_name("no-such-group");
  add("DestroyGroup", &v1::Epd::Stub::DestroyGroup, destroy_group, v1::DestroyGroupResponse());
  v1::CreateHandleRequest create_handle;
  create_handle.set_group("no-such-group");
  add("CreateHandle", &v1::Epd::Stub::CreateHandle, create_handle, v1::HandleInfo());
  v1::AttachHandleRequest attach_handle;
  attach_handle.set_name("no-such-handle");
  add("AttachHandle", &v1::Epd::Stub::AttachHandle, attach_handle, v1::HandleInfo());
  v1::AttachDataPlaneRequest attach_data_plane;
  attach_data_plane.set_handle_id(999);
  add("AttachDataPlane", &v1::Epd::Stub::AttachDataPlane, attach_data_plane, v1::DataPlaneInfo());
  v1::DestroyHandleRequest destroy_handle;
  destroy_handle.set_handle_id(999);
  add("DestroyHandle", &v1::Epd::Stub::DestroyHandle, destroy_handle, v1::DestroyHandleResponse());
  v1::UpdateHandleRequest update;
  update.set_handle_id(999);
  *update.mutable_topk_idx() = Tensor(1, v1::DTYPE_INT32);
  add("UpdateHandle", &v1::Epd::Stub::UpdateHandle, update, v1::OpResponse());
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(999);
  *dispatch.mutable_x() = Tensor(1, v1::DTYPE_FP32);
  add("Dispatch", &v1::Epd::Stub::Dispatch, dispatch, v1::OpResponse());
  v1::CombineRequest combine;
  combine.set_handle_id(999);
  *combine.mutable_out() = Tensor(1, v1::DTYPE_FP32);
  add("Combine", &v1::Epd::Stub::Combine, combine, v1::OpResponse());
  return calls;
}

std::string FlipLastBit(std::string secret) {
  secret.back() = secret.back() == '0' ? '1' : '0';
  return secret;
}

TEST(SessionCredentialTest, EveryCallNamingASessionWantsItsSecret) {
  auto daemon = DaemonProcess::Start({"--log-level", "debug"}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  auto session = client->OpenSession(0, "owner");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  auto other = client->OpenSession(0, "other");  // the same process's second session
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  const std::string& secret = (*session)->secret();
  ASSERT_EQ(secret.size(), 16u) << secret;
  ASSERT_NE(secret, (*other)->secret());
  auto shm = SharedMemoryBuffer::Create(4096);
  ASSERT_TRUE(shm.ok()) << shm.status().ToString();

  const std::string id = std::to_string((*session)->id());
  const std::string flipped = FlipLastBit(secret);
  for (const SessionCall& call : CallsNaming(client->stub(), (*session)->id(), (*shm)->Source())) {
    SCOPED_TRACE(call.method);
    EXPECT_EPD_ERROR(call.call({}), StatusCode::kPermissionDenied, "session_id = " + id,
                     "epd-session-secret", "missing");
    EXPECT_EPD_ERROR(call.call({"not-a-secret"}), StatusCode::kPermissionDenied,
                     "session_id = " + id, "epd-session-secret", "16 hex digits");
    EXPECT_EPD_ERROR(call.call({secret, secret}), StatusCode::kPermissionDenied,
                     "epd-session-secret", "appears 2 times");
    // A wrong secret and another session's secret read the same: nothing says how close.
    const Status wrong = call.call({flipped});
    EXPECT_EPD_ERROR(wrong, StatusCode::kPermissionDenied, "session_id = " + id,
                     "epd-session-secret");
    EXPECT_EQ(call.call({(*other)->secret()}).ToString(), wrong.ToString());
    // The right one: whatever the request itself deserves.
    const Status right = call.call({secret});
    EXPECT_NE(right.code(), StatusCode::kPermissionDenied) << right.ToString();
  }
  // CloseSession too, last: the right secret ends the session.
  v1::CloseSessionRequest close;
  close.set_session_id((*session)->id());
  v1::CloseSessionResponse closed;
  EXPECT_EPD_ERROR(RawCall(client->stub(), &v1::Epd::Stub::CloseSession, close, &closed),
                   StatusCode::kPermissionDenied, "epd-session-secret", "missing");
  EXPECT_EPD_ERROR(
      RawCall(client->stub(), &v1::Epd::Stub::CloseSession, close, &closed, {(*other)->secret()}),
      StatusCode::kPermissionDenied, "epd-session-secret");
  EXPECT_TRUE((*session)->CreateFence().ok()) << "a refused call closed the session";
  EXPECT_EPD_OK(RawCall(client->stub(), &v1::Epd::Stub::CloseSession, close, &closed, {secret}));
  EXPECT_EPD_ERROR((*session)->CreateFence().status(), StatusCode::kNotFound,
                   "not an open session");

  // The secrets never reach the log, even at debug.
  const std::string log = (*daemon)->ReadLog();
  EXPECT_EQ(log.find(secret), std::string::npos);
  EXPECT_EQ(log.find((*other)->secret()), std::string::npos);
}

TEST(SessionCredentialTest, HonestClientsAndSessionlessCallsNeedNothingMore) {
  auto daemon = DaemonProcess::Start({}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  v1::Epd::Stub& stub = client->stub();

  // Sessionless calls carry no header.
  v1::NodeInfo node;
  EXPECT_EPD_OK(RawCall(stub, &v1::Epd::Stub::GetNodeInfo, v1::GetNodeInfoRequest(), &node));
  v1::Stats stats;
  EXPECT_EPD_OK(RawCall(stub, &v1::Epd::Stub::GetStats, v1::GetStatsRequest(), &stats));
  v1::ListGroupsResponse groups;
  EXPECT_EPD_OK(RawCall(stub, &v1::Epd::Stub::ListGroups, v1::ListGroupsRequest(), &groups));
  v1::ListSessionsResponse sessions;
  EXPECT_EPD_OK(RawCall(stub, &v1::Epd::Stub::ListSessions, v1::ListSessionsRequest(), &sessions));
  v1::CreateGroupRequest persistent;
  *persistent.mutable_config() = SmallGroup(UniqueName("persistent"));
  persistent.set_persistent(true);  // session_id 0: no owner
  v1::CreateGroupResponse created;
  EXPECT_EPD_OK(RawCall(stub, &v1::Epd::Stub::CreateGroup, persistent, &created));
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel((*daemon)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext health_context;
  grpc::health::v1::HealthCheckResponse serving;
  EXPECT_TRUE(health->Check(&health_context, {}, &serving).ok());
  // A session-owned group names no session: NOT_FOUND as before (0 is never an id).
  v1::CreateGroupRequest ownerless = persistent;
  ownerless.set_persistent(false);
  EXPECT_EPD_ERROR(RawCall(stub, &v1::Epd::Stub::CreateGroup, ownerless, &created),
                   StatusCode::kNotFound, "session_id = 0");

  // A unary session: its OpenSession answer carries the secret; with it, calls work.
  v1::OpenSessionRequest open;
  open.set_client_name("unary");
  v1::OpenSessionResponse unary;
  ASSERT_EPD_OK(RawCall(stub, &v1::Epd::Stub::OpenSession, open, &unary));
  EXPECT_TRUE(std::regex_match(unary.session_secret(), std::regex("[0-9a-f]{16}")))
      << unary.session_secret();
  v1::CreateFenceRequest fence;
  fence.set_session_id(unary.session_id());
  v1::CreateFenceResponse fence_created;
  EXPECT_EPD_OK(
      RawCall(stub, &v1::Epd::Stub::CreateFence, fence, &fence_created, {unary.session_secret()}));

  // The client library: the Session stream's first answer carried the secret, and every
  // call of the session sends it; a whole layer runs as before.
  example::Problem problem;
  problem.ranks = 1;
  problem.experts = 2;
  problem.hidden = 16;
  problem.max_tokens = 4;
  problem.top_k = 1;
  example::RankRunnerOptions options;
  options.group = UniqueName("honest");
  auto ranks = MakeRanks((*daemon)->address(), problem, options);
  ASSERT_TRUE(ranks.ok()) << ranks.status().ToString();
  const std::string& stream_secret = (*ranks)[0].runner->session().secret();
  EXPECT_TRUE(std::regex_match(stream_secret, std::regex("[0-9a-f]{16}"))) << stream_secret;
  EXPECT_NE(stream_secret, unary.session_secret());
  EXPECT_EPD_OK(RunGoodLayer(*ranks, 0));
  EXPECT_EPD_OK(RunGoodLayer(*ranks, 1, /*fenced=*/true));
}

// Over TCP every caller is an unknown peer, so the process binding cannot tell a thief from
// the owner: the secret alone keeps the session (whose id ListSessions shows) the owner's.
TEST(SessionCredentialTest, OverTcpAListedSessionIdIsUselessWithoutItsSecret) {
  auto daemon = DaemonProcess::Start({"--tcp-listen", "127.0.0.1:0"}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto address = TcpAddressOf(**daemon);
  ASSERT_TRUE(address.ok()) << address.status().ToString();
  auto owner = ConnectOrDie(*address);
  ASSERT_NE(owner, nullptr);
  auto session = owner->OpenSession(0, "tcp-owner");
  ASSERT_TRUE(session.ok()) << session.status().ToString();

  auto thief = ConnectOrDie(*address);
  ASSERT_NE(thief, nullptr);
  v1::ListSessionsResponse listed;
  ASSERT_EPD_OK(
      RawCall(thief->stub(), &v1::Epd::Stub::ListSessions, v1::ListSessionsRequest(), &listed));
  ASSERT_EQ(listed.sessions_size(), 1);
  ASSERT_EQ(listed.sessions(0).session_id(), (*session)->id());
  v1::CloseSessionRequest close;
  close.set_session_id(listed.sessions(0).session_id());
  v1::CloseSessionResponse closed;
  EXPECT_EPD_ERROR(RawCall(thief->stub(), &v1::Epd::Stub::CloseSession, close, &closed),
                   StatusCode::kPermissionDenied, "epd-session-secret");
  EXPECT_EPD_ERROR(RawCall(thief->stub(), &v1::Epd::Stub::CloseSession, close, &closed,
                           {FlipLastBit((*session)->secret())}),
                   StatusCode::kPermissionDenied, "epd-session-secret");
  EXPECT_TRUE((*session)->CreateFence().ok()) << "the owner's session was closed";
  // Whoever holds the secret holds the session here: it is the whole credential over TCP.
  EXPECT_EPD_OK(
      RawCall(thief->stub(), &v1::Epd::Stub::CloseSession, close, &closed, {(*session)->secret()}));
}

}  // namespace
}  // namespace epd::testing
