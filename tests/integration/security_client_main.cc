// epd_test_security_client: one hostile (or merely foreign) request from its own process, for
// the security tests, which may run it as another user. Prints "CODE <n> <message>" with the
// daemon's answer and exits 0; any failure to even ask prints "ERROR ...".
//   register --shm NAME --size N   opens a session on rank 0 and registers the object
//   close --session HEX            closes a session this process did not open
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "epd/v1/epd.grpc.pb.h"

namespace {

int Print(const grpc::Status& status) {
  std::printf("CODE %d %s\n", static_cast<int>(status.error_code()),
              status.error_message().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string address, shm, session_hex;
  uint64_t size = 4096;
  CLI::App app{"epd security-test client"};
  app.add_option("--address", address)->required();
  auto* reg = app.add_subcommand("register", "register a shm object");
  reg->add_option("--shm", shm)->required();
  reg->add_option("--size", size);
  auto* close = app.add_subcommand("close", "close a session by id");
  close->add_option("--session", session_hex)->required();
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  auto stub = epd::v1::Epd::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto call = [] {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  };
  if (reg->parsed()) {
    epd::v1::OpenSessionRequest open;
    open.set_rank(0);
    open.set_client_name("security-test");
    epd::v1::OpenSessionResponse opened;
    grpc::Status status = stub->OpenSession(call().get(), open, &opened);
    if (!status.ok()) {
      std::printf("ERROR OpenSession: %s\n", status.error_message().c_str());
      return 1;
    }
    epd::v1::RegisterBufferRequest request;
    request.set_session_id(opened.session_id());
    request.mutable_source()->set_shm_name(shm);
    request.mutable_source()->set_size(size);
    epd::v1::RegisterBufferResponse response;
    return Print(stub->RegisterBuffer(call().get(), request, &response));
  }
  epd::v1::CloseSessionRequest request;
  request.set_session_id(std::stoull(session_hex, nullptr, 16));
  epd::v1::CloseSessionResponse response;
  return Print(stub->CloseSession(call().get(), request, &response));
}
