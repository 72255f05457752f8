// Randomised bad input on the Session stream: each stream opens a session (the open itself
// changed now and then, or replaced by an op), gives it a one-rank group, a handle and a buffer
// through unary calls, then sends ops changed one field each (proto_mutator.h), some
// pipelined. Every request gets one answer, in order, with its request_id and a canonical
// code; the stream ends with a canonical status; ended streams leave nothing held. Runs on the
// cpu backend, or the cuda one with EPD_FUZZ_BACKEND=cuda (fuzz_support.h).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tests/integration/fuzz_support.h"

namespace epd::testing {
namespace {

using StreamFuzzTest = FuzzDaemonTest;

TEST_F(StreamFuzzTest, ChangedSessionStreamRequestsGetOneAnswerEachInOrder) {
  auto world = MakeWorld(UniqueName("fuzz-stream"), problem_);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*world, 0));  // staged tokens and routing in the shared buffers
  auto client = ConnectOrDie(daemon_->address());
  auto baseline = client->GetStats();
  ASSERT_TRUE(baseline.ok()) << baseline.status().ToString();

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  constexpr int kStreams = 64;
  constexpr int kOpsPerStream = 30;
  const int streams = kStreams * FuzzScale();
  for (int stream_index = 0; stream_index < streams; ++stream_index) {
    std::mt19937_64 rng(7000 + stream_index);
    const int rank = stream_index % ranks_;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 2 * kAnswerBound);
    auto stream = client->stub().Session(&context);
    std::vector<uint64_t> sent;  // request ids in order
    auto send = [&](v1::SessionRequest request, bool change, std::string* what) {
      if (change) *what = MutateOneField(request, rng).description;
      sent.push_back(request.request_id());
      return stream->Write(request);
    };
    std::string what = "open unchanged";
    v1::SessionRequest open;
    open.set_request_id(1);
    open.mutable_open()->set_rank(rank);
    open.mutable_open()->set_client_name("fuzz-stream");
    const bool opened_sent = send(open, std::uniform_int_distribution<int>(0, 3)(rng) == 0, &what);
    v1::SessionResponse opened;
    const bool answered = opened_sent && stream->Read(&opened);
    const std::string name = fmt::format("stream {} ({})", stream_index, what);
    size_t read = answered ? 1 : 0;
    if (answered && opened.code() == 0 && opened.has_opened()) {
      // A one-rank group of the stream's own, its handle and the buffer of a frontend of the
      // rank it opened (a changed open may have named another).
      const int opened_rank = opened.opened().rank();
      example::RankRunner& runner = *(*world)[opened_rank].runner;
      const uint64_t session = opened.opened().session_id();
      const std::string secret = opened.opened().session_secret();
      v1::CreateGroupRequest group;
      group.set_session_id(session);
      *group.mutable_config() = problem_.Config(UniqueName("stream-group"));
      group.mutable_config()->clear_ranks();
      group.mutable_config()->add_ranks(opened_rank);
      group.mutable_config()->set_world_size(1);
      v1::CreateGroupResponse group_created;
      v1::RegisterBufferRequest buffer;
      buffer.set_session_id(session);
      *buffer.mutable_source() = runner.buffer_source();
      v1::RegisterBufferResponse registered;
      v1::CreateHandleRequest handle;
      handle.set_session_id(session);
      handle.set_group(group.config().name());
      v1::HandleInfo created;
      const Outcome steps[] = {
          CallWithSecret(client->stub(), &v1::Epd::Stub::CreateGroup, group, secret,
                         &group_created),
          CallWithSecret(client->stub(), &v1::Epd::Stub::RegisterBuffer, buffer, secret,
                         &registered),
          CallWithSecret(client->stub(), &v1::Epd::Stub::CreateHandle, handle, secret, &created)};
      for (const Outcome& step : steps) {
        ASSERT_EQ(step.code, StatusCode::kOk) << name << ": " << step.message;
      }
      auto on_buffer = [&](v1::TensorRef ref) {
        ref.set_buffer_id(registered.buffer_id());
        return ref;
      };
      int bound = 0;  // what the stream's own updates bind (the changes aside)
      for (int i = 0; i < kOpsPerStream; ++i) {
        v1::SessionRequest op;
        op.set_request_id(100 + i);
        const int n = std::uniform_int_distribution<int>(0, problem_.max_tokens)(rng);
        switch (std::uniform_int_distribution<int>(0, 2)(rng)) {
          case 0: {
            v1::UpdateHandleRequest* u = op.mutable_update();
            u->set_handle_id(created.handle_id());
            *u->mutable_topk_idx() = on_buffer(runner.topk_ref(n));
            *u->mutable_topk_weights() = on_buffer(runner.weights_ref(n));
            bound = n;
            break;
          }
          case 1: {
            *op.mutable_dispatch() = runner.DispatchRequestFor(bound, BlockingOptions());
            op.mutable_dispatch()->set_handle_id(created.handle_id());
            *op.mutable_dispatch()->mutable_x() = on_buffer(op.dispatch().x());
            break;
          }
          default: {
            v1::CombineRequest* c = op.mutable_combine();
            c->set_handle_id(created.handle_id());
            *c->mutable_out() = on_buffer(runner.out_ref(bound));
            break;
          }
        }
        std::string change;
        if (!send(op, std::uniform_int_distribution<int>(0, 3)(rng) != 0, &change)) break;
        // Now and then read what is answered so far; otherwise the requests pipeline.
        while (std::uniform_int_distribution<int>(0, 2)(rng) == 0 && read < sent.size()) {
          v1::SessionResponse response;
          if (!stream->Read(&response)) break;
          if (response.request_id() != sent[read]) {
            failures.push_back(fmt::format("{}: answer {} has request_id {}, expected {}", name,
                                           read, response.request_id(), sent[read]));
          }
          ++codes[static_cast<StatusCode>(response.code())];
          if (!IsCanonicalError(static_cast<StatusCode>(response.code())) ||
              (response.code() != 0 && response.message().empty())) {
            failures.push_back(fmt::format("{}: request {} ({}) -> code {}: '{}'", name, sent[read],
                                           change, response.code(), response.message()));
          }
          ++read;
        }
      }
    }
    stream->WritesDone();
    v1::SessionResponse response;
    while (stream->Read(&response)) {
      if (read < sent.size() && response.request_id() != sent[read]) {
        failures.push_back(fmt::format("{}: answer {} has request_id {}, expected {}", name, read,
                                       response.request_id(), sent[read]));
      }
      ++codes[static_cast<StatusCode>(response.code())];
      if (!IsCanonicalError(static_cast<StatusCode>(response.code()))) {
        failures.push_back(fmt::format("{}: request {} -> code {}: '{}'", name,
                                       response.request_id(), response.code(), response.message()));
      }
      ++read;
    }
    const Status finished = FromGrpcStatus(stream->Finish());
    if (!IsCanonicalError(finished.code()) || finished.code() == StatusCode::kDeadlineExceeded) {
      failures.push_back(fmt::format("{}: the stream ended with {}", name, finished.ToString()));
    }
    // A stream that ends early (a refused first request) leaves later requests unanswered;
    // one that ends OK answered every request.
    if (finished.ok() && read != sent.size()) {
      failures.push_back(
          fmt::format("{}: {} answers to {} requests, then OK", name, read, sent.size()));
    }
  }
  const v1::Stats after = WaitForStats(*client, [&](const v1::Stats& s) {
    return s.live_bytes() == baseline->live_bytes() &&
           s.sessions_open() == baseline->sessions_open();
  });
  EXPECT_EQ(after.live_bytes(), baseline->live_bytes()) << "bytes still held by ended streams";
  EXPECT_EQ(after.sessions_open(), baseline->sessions_open()) << "sessions left open";
  EXPECT_EPD_OK(RunGoodLayer(*world, 1));
  const std::string summary = CodeSummary(codes);
  std::cout << "stream answers:" << summary << "\n";
  EXPECT_GE(codes[StatusCode::kOk], streams * kOpsPerStream / 10) << summary;
  EXPECT_GE(codes[StatusCode::kInvalidArgument], streams * kOpsPerStream / 10) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

}  // namespace
}  // namespace epd::testing
