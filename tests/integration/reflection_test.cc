// Server reflection and health, as grpcurl sees them: the real daemon lists its services,
// and every service's descriptors come back complete enough to resolve its methods (what
// `grpcurl list` / `grpcurl describe` do). Health Check reports SERVING.
#include <gmock/gmock.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/integration/daemon_process.h"

namespace epd::testing {
namespace {

using grpc::reflection::v1alpha::ServerReflection;
using grpc::reflection::v1alpha::ServerReflectionRequest;
using grpc::reflection::v1alpha::ServerReflectionResponse;
using ::testing::IsSupersetOf;

constexpr auto kRpcTimeout = std::chrono::seconds(5);

std::unique_ptr<grpc::ClientContext> ContextWithDeadline() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  return context;
}

// One reflection stream. The server sends each file once per stream (later answers omit
// files already sent), so all files received are collected into one database.
class ReflectionClient {
 public:
  explicit ReflectionClient(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(ServerReflection::NewStub(channel)),
        context_(ContextWithDeadline()),
        stream_(stub_->ServerReflectionInfo(context_.get())) {}

  ~ReflectionClient() {
    stream_->WritesDone();
    stream_->Finish().IgnoreError();
  }

  std::vector<std::string> ListServices() {
    ServerReflectionRequest request;
    request.set_list_services("*");
    ServerReflectionResponse response = Ask(request);
    std::vector<std::string> names;
    for (const auto& service : response.list_services_response().service()) {
      names.push_back(service.name());
    }
    return names;
  }

  // Asks for the file defining `symbol`; returns the error message, empty on success.
  std::string FetchFileContaining(const std::string& symbol) {
    ServerReflectionRequest request;
    request.set_file_containing_symbol(symbol);
    ServerReflectionResponse response = Ask(request);
    if (response.has_error_response()) return response.error_response().error_message();
    for (const auto& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      if (!file.ParseFromString(bytes)) return "a file_descriptor_proto does not parse";
      // The server may resend a file this stream already carried; keep the first copy.
      google::protobuf::FileDescriptorProto known;
      if (!database_.FindFileByName(file.name(), &known)) database_.Add(file);
    }
    return "";
  }

  google::protobuf::DescriptorPool& pool() { return pool_; }

 private:
  ServerReflectionResponse Ask(const ServerReflectionRequest& request) {
    ServerReflectionResponse response;
    EXPECT_TRUE(stream_->Write(request));
    EXPECT_TRUE(stream_->Read(&response));
    return response;
  }

  std::unique_ptr<ServerReflection::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<ServerReflectionRequest, ServerReflectionResponse>>
      stream_;
  google::protobuf::SimpleDescriptorDatabase database_;
  google::protobuf::DescriptorPool pool_{&database_};  // resolves lazily, dependencies first
};

class ReflectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto daemon = DaemonProcess::Start({}, /*ranks=*/2);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    channel_ = grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (HasFailure() && daemon_ != nullptr) std::cerr << "epd log:\n" << daemon_->ReadLog();
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ReflectionTest, ListsEveryService) {
  ReflectionClient reflection(channel_);
  EXPECT_THAT(reflection.ListServices(),
              IsSupersetOf({"epd.v1.Epd", "grpc.health.v1.Health",
                            "grpc.reflection.v1alpha.ServerReflection"}));
}

TEST_F(ReflectionTest, DescribesEveryListedService) {
  ReflectionClient reflection(channel_);
  const std::vector<std::string> services = reflection.ListServices();
  ASSERT_FALSE(services.empty());
  for (const auto& name : services) {
    ASSERT_EQ(reflection.FetchFileContaining(name), "") << name;
    const auto* service = reflection.pool().FindServiceByName(name);
    ASSERT_NE(service, nullptr) << name << " does not resolve from the reflected files";
    EXPECT_GT(service->method_count(), 0) << name;
    for (int i = 0; i < service->method_count(); ++i) {
      // Resolving input and output types proves every dependency file came along.
      EXPECT_NE(service->method(i)->input_type(), nullptr) << service->method(i)->full_name();
      EXPECT_NE(service->method(i)->output_type(), nullptr) << service->method(i)->full_name();
    }
  }
}

TEST_F(ReflectionTest, EpdMethodsAndMessagesResolve) {
  ReflectionClient reflection(channel_);
  ASSERT_EQ(reflection.FetchFileContaining("epd.v1.Epd"), "");
  const auto* epd = reflection.pool().FindServiceByName("epd.v1.Epd");
  ASSERT_NE(epd, nullptr);
  std::set<std::string> methods;
  for (int i = 0; i < epd->method_count(); ++i) methods.insert(epd->method(i)->name());
  EXPECT_THAT(methods,
              IsSupersetOf({"GetNodeInfo", "GetStats", "Session", "OpenSession", "CloseSession",
                            "RegisterBuffer", "CreateGroup", "CreateHandle", "AttachHandle",
                            "UpdateHandle", "Dispatch", "Combine"}));
  const auto* session = epd->FindMethodByName("Session");
  ASSERT_NE(session, nullptr);
  EXPECT_TRUE(session->client_streaming());
  EXPECT_TRUE(session->server_streaming());
  const auto* dispatch = epd->FindMethodByName("Dispatch");
  ASSERT_NE(dispatch, nullptr);
  EXPECT_EQ(dispatch->input_type()->full_name(), "epd.v1.DispatchRequest");
  // A field whose type lives in types.proto: the dependency was sent and linked.
  const auto* x = dispatch->input_type()->FindFieldByName("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->message_type()->full_name(), "epd.v1.TensorRef");

  // `grpcurl describe epd.v1.GroupConfig`: a message symbol resolves too.
  ASSERT_EQ(reflection.FetchFileContaining("epd.v1.GroupConfig"), "");
  EXPECT_NE(reflection.pool().FindMessageTypeByName("epd.v1.GroupConfig"), nullptr);
}

TEST_F(ReflectionTest, HealthMethodsResolve) {
  ReflectionClient reflection(channel_);
  ASSERT_EQ(reflection.FetchFileContaining("grpc.health.v1.Health"), "");
  const auto* health = reflection.pool().FindServiceByName("grpc.health.v1.Health");
  ASSERT_NE(health, nullptr);
  EXPECT_NE(health->FindMethodByName("Check"), nullptr);
  EXPECT_NE(health->FindMethodByName("Watch"), nullptr);
}

TEST_F(ReflectionTest, UnknownSymbolIsAnError) {
  ReflectionClient reflection(channel_);
  EXPECT_NE(reflection.FetchFileContaining("epd.v1.NoSuchThing"), "");
}

TEST_F(ReflectionTest, HealthCheckReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "epd.v1.Epd"}) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    auto context = ContextWithDeadline();
    grpc::Status status = health->Check(context.get(), request, &response);
    ASSERT_TRUE(status.ok()) << "'" << service << "': " << status.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse response;
  auto context = ContextWithDeadline();
  EXPECT_EQ(health->Check(context.get(), request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ReflectionTest, HealthWatchSendsStatusAndEndsAtShutdown) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest request;
  auto context = ContextWithDeadline();
  auto watch = health->Watch(context.get(), request);
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // An open Watch stream must not hold up shutdown.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(daemon_->Stop(), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  while (watch->Read(&response)) {
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  }
  watch->Finish().IgnoreError();
}

}  // namespace
}  // namespace epd::testing
