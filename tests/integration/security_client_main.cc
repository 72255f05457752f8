// epd_test_security_client: one hostile (or merely foreign) request from its own process, for
// the security tests, which may run it as another user. Prints "CODE <n> <message>" with the
// daemon's answer and exits 0; any failure to even ask prints "ERROR ...". A hand-made client
// on the raw stub: it sends the session secret header itself, for its own sessions.
//   register --shm NAME --size N   opens a session on rank 0 and registers the object
//   close --session HEX [--secret S]  closes a session this process did not open, presenting
//                                  S (16 hex digits) as its secret when given
//   abuse --seconds S --group G... for S seconds: fences to the limit, truncated buffers,
//                                  guessed session ids and secrets, other sessions' ids (from
//                                  ListSessions) and groups; prints
//                                  "DONE <rounds> <unexpected answers>"
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

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
  std::string address, shm, session_hex, secret;
  uint64_t size = 4096;
  CLI::App app{"epd security-test client"};
  app.add_option("--address", address)->required();
  auto* reg = app.add_subcommand("register", "register a shm object");
  reg->add_option("--shm", shm)->required();
  reg->add_option("--size", size);
  auto* close = app.add_subcommand("close", "close a session by id");
  close->add_option("--session", session_hex)->required();
  close->add_option("--secret", secret);
  double seconds = 2;
  std::vector<std::string> victim_groups;
  auto* abuse = app.add_subcommand("abuse", "misbehave for a while");
  abuse->add_option("--seconds", seconds);
  abuse->add_option("--group", victim_groups)->required();
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  auto stub = epd::v1::Epd::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  // A call presenting `session_secret` in the header when it is not empty.
  auto call = [](const std::string& session_secret = {}) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!session_secret.empty()) context->AddMetadata("epd-session-secret", session_secret);
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
    return Print(stub->RegisterBuffer(call(opened.session_secret()).get(), request, &response));
  }
  if (abuse->parsed()) {
    int rounds = 0, unexpected = 0;
    std::mt19937_64 guesses(getpid());
    auto guessed_secret = [&] {
      char text[17];
      std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(guesses()));
      return std::string(text);
    };
    auto expect = [&](const grpc::Status& status, grpc::StatusCode code, const char* what) {
      if (status.error_code() != code) {
        ++unexpected;
        std::fprintf(stderr, "%s: %d %s\n", what, static_cast<int>(status.error_code()),
                     status.error_message().c_str());
      }
    };
    const auto end = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    const std::string shm = "/epd-client-abuser-" + std::to_string(getpid());
    while (std::chrono::steady_clock::now() < end) {
      ++rounds;
      epd::v1::OpenSessionRequest open;
      open.set_rank(0);
      open.set_client_name("abuser");
      epd::v1::OpenSessionResponse opened;
      if (!stub->OpenSession(call().get(), open, &opened).ok()) {
        ++unexpected;
        continue;
      }
      const uint64_t session = opened.session_id();
      const std::string& own_secret = opened.session_secret();
      // Fences until the per-session limit answers.
      grpc::Status status;
      for (int i = 0; i < 100'000; ++i) {
        epd::v1::CreateFenceRequest fence;
        fence.set_session_id(session);
        epd::v1::CreateFenceResponse created;
        status = stub->CreateFence(call(own_secret).get(), fence, &created);
        if (!status.ok()) break;
      }
      expect(status, grpc::StatusCode::RESOURCE_EXHAUSTED, "fence limit");
      // A buffer registered, then truncated under the daemon, then released.
      const int fd = shm_open(shm.c_str(), O_CREAT | O_RDWR, 0600);
      if (fd < 0 || ftruncate(fd, 1 << 20) != 0) ++unexpected;
      epd::v1::RegisterBufferRequest reg;
      reg.set_session_id(session);
      reg.mutable_source()->set_shm_name(shm);
      reg.mutable_source()->set_size(1 << 20);
      epd::v1::RegisterBufferResponse registered;
      expect(stub->RegisterBuffer(call(own_secret).get(), reg, &registered), grpc::StatusCode::OK,
             "register");
      if (ftruncate(fd, 0) != 0) ++unexpected;
      ::close(fd);
      shm_unlink(shm.c_str());
      // Guessed session ids: without a secret the header is asked for before the id is looked
      // up; with a guessed one the id is unknown.
      for (int i = 0; i < 20; ++i) {
        epd::v1::CloseSessionRequest close_other;
        close_other.set_session_id(guesses());
        epd::v1::CloseSessionResponse closed;
        expect(stub->CloseSession(call().get(), close_other, &closed),
               grpc::StatusCode::PERMISSION_DENIED, "guessed session");
        expect(stub->CloseSession(call(guessed_secret()).get(), close_other, &closed),
               grpc::StatusCode::NOT_FOUND, "guessed session and secret");
      }
      // The honest frontends' sessions, whose ids anyone can list: refused without their
      // secret (and this process did not open them either).
      epd::v1::ListSessionsResponse listed;
      expect(stub->ListSessions(call().get(), epd::v1::ListSessionsRequest(), &listed),
             grpc::StatusCode::OK, "list sessions");
      for (const auto& victim : listed.sessions()) {
        if (victim.session_id() == session) continue;
        epd::v1::CloseSessionRequest close_victim;
        close_victim.set_session_id(victim.session_id());
        epd::v1::CloseSessionResponse closed;
        expect(stub->CloseSession(call().get(), close_victim, &closed),
               grpc::StatusCode::PERMISSION_DENIED, "listed session");
        expect(stub->CloseSession(call(guessed_secret()).get(), close_victim, &closed),
               grpc::StatusCode::PERMISSION_DENIED, "listed session, guessed secret");
      }
      // Its own session with a guessed secret: refused although this process opened it.
      epd::v1::CreateFenceRequest guessed_fence;
      guessed_fence.set_session_id(session);
      epd::v1::CreateFenceResponse guessed_created;
      expect(stub->CreateFence(call(guessed_secret()).get(), guessed_fence, &guessed_created),
             grpc::StatusCode::PERMISSION_DENIED, "own session, guessed secret");
      // Other sessions' groups and ranks.
      for (const std::string& group : victim_groups) {
        epd::v1::DestroyGroupRequest destroy;
        destroy.set_session_id(session);
        destroy.set_name(group);
        epd::v1::DestroyGroupResponse destroyed;
        expect(stub->DestroyGroup(call(own_secret).get(), destroy, &destroyed),
               grpc::StatusCode::PERMISSION_DENIED, "destroy group");
        epd::v1::CreateHandleRequest steal;
        steal.set_session_id(session);
        steal.set_group(group);
        epd::v1::HandleInfo stolen;
        expect(stub->CreateHandle(call(own_secret).get(), steal, &stolen),
               grpc::StatusCode::PERMISSION_DENIED, "steal rank");
      }
      epd::v1::CloseSessionRequest close_own;
      close_own.set_session_id(session);
      epd::v1::CloseSessionResponse closed;
      expect(stub->CloseSession(call(own_secret).get(), close_own, &closed), grpc::StatusCode::OK,
             "close own");
    }
    std::printf("DONE %d %d\n", rounds, unexpected);
    std::fflush(stdout);
    return 0;
  }
  epd::v1::CloseSessionRequest request;
  request.set_session_id(std::stoull(session_hex, nullptr, 16));
  epd::v1::CloseSessionResponse response;
  return Print(stub->CloseSession(call(secret).get(), request, &response));
}
