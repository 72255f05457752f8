// Randomised bad input against the real daemon, unary calls: two fuzzing frontends (one per
// rank of their own group) send requests built from what a working frontend sends, each with
// one field changed at random (proto_mutator.h), while another pair runs layers of another
// group checked bit for bit. Every answer comes within a bound, with a canonical code other
// than INTERNAL / UNKNOWN / UNIMPLEMENTED / DATA_LOSS, and an error has a bounded message
// naming the field or the value; the other group keeps serving; once the fuzzing sessions are
// gone the daemon holds no more memory, sessions, file descriptors or shared-memory objects
// than before. Each round fuzzes another kind of group. Seeds are fixed, so a failure names
// the request that caused it (its change and its answer); the interleaving of the threads is
// not. EPD_FUZZ_LOG=<file> keeps every request with its answer; fuzz_support.h has the rest.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <type_traits>

#include "tests/integration/fuzz_support.h"

namespace epd::testing {
namespace {

using example::Problem;

constexpr int kRounds = 4;              // one per kind of group (RoundProblem)
constexpr int kRequestsPerRound = 150;  // per fuzzing rank

// Whether the answer refuses a value read from the routing tensors (topk_idx[t, k] on the cpu
// backend, topk_weights[t][k] on the cuda one): the bind's check of the buffer's content.
bool NamesARoutingValue(const Outcome& outcome) {
  static const std::regex value(R"(topk_(idx|weights)\[\d+)");
  return outcome.code == StatusCode::kInvalidArgument && std::regex_search(outcome.message, value);
}

// Whether `message` names a field on the changed path or quotes the value it was set to.
bool NamesTheChange(const std::string& message, const Mutation& change) {
  std::string path = change.path;
  for (size_t open = path.find('['); open != std::string::npos; open = path.find('[')) {
    path.erase(open, path.find(']', open) - open + 1);
  }
  for (size_t begin = 0; begin <= path.size();) {
    const size_t end = std::min(path.find('.', begin), path.size());
    if (end > begin && message.find(path.substr(begin, end - begin)) != std::string::npos) {
      return true;
    }
    begin = end + 1;
  }
  const std::string quoted = change.value.empty() ? "''" : change.value.substr(0, 20);
  return message.find(quoted) != std::string::npos;
}

// Shared-memory objects of the daemon under test and of this process's clients: not all of
// /dev/shm, where tests running beside this one (a frontend killed on purpose) leave theirs.
int EpdShmObjects(pid_t daemon) {
  return CountEntries("/dev/shm", fmt::format("epd-{}-", daemon)) +
         CountEntries("/dev/shm", fmt::format("epd-client-{}-", getpid()));
}

class RequestFuzzTest : public FuzzDaemonTest {
 protected:
  // The fuzzed group of round `round`: each round another layout, algorithm or payload, so
  // that the checks of each are reached.
  Problem RoundProblem(int round) const {
    Problem p = problem_;
    switch (round % 4) {
      case 1:
        p.layout = v1::LAYOUT_RANK_MAJOR;
        break;
      case 2:
        p.algorithm = v1::ALGORITHM_HIGH_THROUGHPUT;
        // Below R * T, so overflow is reachable (with one rank the layer itself needs all T).
        p.recv_capacity = p.ranks > 1 ? p.ranks * p.max_tokens - 4 : 0;
        break;
      case 3:
        p.hidden = 128;
        p.fp8 = true;
        p.prequantized = true;
        p.scale_format = v1::SCALE_FORMAT_UE8M0;
        break;
      default:
        break;
    }
    return p;
  }

  // One changed request of a random kind from fuzzing rank `rank` of `world`.
  // `bound`: the tokens rank's last successful UpdateHandle bound (its ops' shapes follow).
  Outcome SendOne(std::vector<RankClient>& world, int rank, const std::string& group, int& bound,
                  std::mt19937_64& rng);

  // Records what a successful changed request of `rank` left that outlives its session.
  void NoteSurvivors(int rank, const google::protobuf::Message& request);

  std::mutex survivors_mu_;
  // Guarded by survivors_mu_; a set: both ranks may create the same persistent group.
  std::set<std::string> persistent_groups_;
  std::vector<std::pair<int, std::string>> persistent_handles_;   // (rank, name)
  std::vector<std::pair<uint64_t, std::string>> unary_sessions_;  // (id, secret)
};

Outcome RequestFuzzTest::SendOne(std::vector<RankClient>& world, int rank, const std::string& group,
                                 int& bound, std::mt19937_64& rng) {
  example::RankRunner& runner = *world[rank].runner;
  v1::Epd::Stub& stub = world[rank].client->stub();
  const uint64_t session = runner.session().id();
  const std::string& secret = runner.session().secret();
  const int n = std::uniform_int_distribution<int>(0, problem_.max_tokens)(rng);
  // Builds the request, changes one field, sends it and names it in the outcome.
  auto fuzz = [&](const char* rpc, auto method, auto request, auto response) {
    const Mutation change = MutateOneField(request, rng);
    Outcome outcome = CallWithSecret(stub, method, request, secret, &response);
    outcome.request = fmt::format("{} rank {}: {}", rpc, rank, change.description);
    outcome.change = change;
    if (outcome.code == StatusCode::kOk) {
      NoteSurvivors(rank, request);
    }
    // The token count an update binds is taken when the daemon accepts it; a routing that then
    // fails its check (answered naming a value of topk_idx or topk_weights) is bound all the
    // same, and the next dispatch fails saying so.
    if constexpr (std::is_same_v<decltype(request), v1::UpdateHandleRequest>) {
      const bool bound_anyway = outcome.code == StatusCode::kOk || NamesARoutingValue(outcome);
      // (Another handle of the session, made by a changed CreateHandle, binds its own.)
      if (bound_anyway && request.handle_id() == runner.handle_id() &&
          request.topk_idx().shape_size() > 0) {
        bound = static_cast<int>(request.topk_idx().shape(0));
      }
    }
    return outcome;
  };
  switch (std::uniform_int_distribution<int>(0, 17)(rng)) {
    case 0:
    case 1: {  // the data-plane ops come up most often
      v1::UpdateHandleRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      *r.mutable_topk_idx() = runner.topk_ref(n);
      *r.mutable_topk_weights() = runner.weights_ref(n);
      *r.mutable_options() = BlockingOptions();
      return fuzz("UpdateHandle", &v1::Epd::Stub::UpdateHandle, r, v1::OpResponse());
    }
    case 2:
    case 3: {
      v1::DispatchRequest r = runner.DispatchRequestFor(bound, BlockingOptions());
      r.set_session_id(session);
      return fuzz("Dispatch", &v1::Epd::Stub::Dispatch, r, v1::OpResponse());
    }
    case 4:
    case 5: {
      v1::CombineRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      *r.mutable_out() = runner.out_ref(bound);
      if (runner.problem().fp8) *r.mutable_expert_out() = runner.expert_out_ref();
      *r.mutable_options() = BlockingOptions();
      return fuzz("Combine", &v1::Epd::Stub::Combine, r, v1::OpResponse());
    }
    case 6: {
      v1::RegisterBufferRequest r;
      r.set_session_id(session);
      *r.mutable_source() = runner.buffer_source();
      return fuzz("RegisterBuffer", &v1::Epd::Stub::RegisterBuffer, r,
                  v1::RegisterBufferResponse());
    }
    case 7: {
      v1::ReleaseBufferRequest r;
      r.set_session_id(session);
      r.set_buffer_id(runner.buffer_id());
      return fuzz("ReleaseBuffer", &v1::Epd::Stub::ReleaseBuffer, r, v1::ReleaseBufferResponse());
    }
    case 8: {
      v1::CreateFenceRequest r;
      r.set_session_id(session);
      return fuzz("CreateFence", &v1::Epd::Stub::CreateFence, r, v1::CreateFenceResponse());
    }
    case 9: {
      v1::DestroyFenceRequest r;
      r.set_session_id(session);
      r.set_fence_id(1);
      return fuzz("DestroyFence", &v1::Epd::Stub::DestroyFence, r, v1::DestroyFenceResponse());
    }
    case 10: {
      v1::CreateGroupRequest r;
      r.set_session_id(session);
      *r.mutable_config() = runner.problem().Config(group + "-more");
      return fuzz("CreateGroup", &v1::Epd::Stub::CreateGroup, r, v1::CreateGroupResponse());
    }
    case 11: {
      v1::DestroyGroupRequest r;
      r.set_session_id(session);
      r.set_name(group);
      return fuzz("DestroyGroup", &v1::Epd::Stub::DestroyGroup, r, v1::DestroyGroupResponse());
    }
    case 12: {
      v1::CreateHandleRequest r;
      r.set_session_id(session);
      r.set_group(group);
      return fuzz("CreateHandle", &v1::Epd::Stub::CreateHandle, r, v1::HandleInfo());
    }
    case 13: {
      v1::AttachHandleRequest r;
      r.set_session_id(session);
      r.set_name(group + "-handle");
      return fuzz("AttachHandle", &v1::Epd::Stub::AttachHandle, r, v1::HandleInfo());
    }
    case 14: {
      v1::DestroyHandleRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      return fuzz("DestroyHandle", &v1::Epd::Stub::DestroyHandle, r, v1::DestroyHandleResponse());
    }
    case 15: {
      v1::AttachDataPlaneRequest r;
      r.set_session_id(session);
      r.set_handle_id(runner.handle_id());
      return fuzz("AttachDataPlane", &v1::Epd::Stub::AttachDataPlane, r, v1::DataPlaneInfo());
    }
    case 16: {
      v1::OpenSessionRequest r;
      r.set_rank(rank);
      r.set_client_name("fuzz");
      v1::OpenSessionResponse opened;
      const Mutation change = MutateOneField(r, rng);
      Outcome outcome = CallWithSecret(stub, &v1::Epd::Stub::OpenSession, r, secret, &opened);
      outcome.request = fmt::format("OpenSession rank {}: {}", rank, change.description);
      outcome.change = change;
      if (outcome.code == StatusCode::kOk) {
        std::lock_guard lock(survivors_mu_);
        unary_sessions_.emplace_back(opened.session_id(), opened.session_secret());
      }
      return outcome;
    }
    default: {
      v1::ListGroupsRequest r;
      r.set_page_token("");
      return fuzz("ListGroups", &v1::Epd::Stub::ListGroups, r, v1::ListGroupsResponse());
    }
  }
}

void RequestFuzzTest::NoteSurvivors(int rank, const google::protobuf::Message& request) {
  std::lock_guard lock(survivors_mu_);
  if (const auto* group = dynamic_cast<const v1::CreateGroupRequest*>(&request)) {
    if (group->persistent()) persistent_groups_.insert(group->config().name());
  }
  if (const auto* handle = dynamic_cast<const v1::CreateHandleRequest*>(&request)) {
    if (handle->persistent()) persistent_handles_.emplace_back(rank, handle->name());
  }
}

TEST_F(RequestFuzzTest, ChangedRequestsGetCanonicalAnswersAndNothingLeaks) {
  auto good = MakeWorld(UniqueName("good"), problem_);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*good, 0));
  auto stats_client = ConnectOrDie(daemon_->address());
  auto baseline = stats_client->GetStats();
  ASSERT_TRUE(baseline.ok()) << baseline.status().ToString();
  const int baseline_fds = daemon_->open_fds();
  const int baseline_shm = EpdShmObjects(daemon_->pid());
  ASSERT_GT(baseline_shm, 0) << "the good group's handles and buffers are not counted";

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  // Every request and its answer, for a reader of a failure: EPD_FUZZ_LOG=<file>.
  std::ofstream log;
  if (const char* path = std::getenv("EPD_FUZZ_LOG")) log.open(path);
  int good_layers = 1;
  const int rounds = kRounds * FuzzScale();
  for (int round = 0; round < rounds; ++round) {
    const std::string group = UniqueName("fuzz");
    auto world = MakeWorld(group, RoundProblem(round));
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    ASSERT_EPD_OK(RunGoodLayer(*world, 0));  // bound routing: the ops below reach the data path

    std::vector<std::vector<Outcome>> outcomes(ranks_);
    std::vector<std::thread> fuzzers;
    for (int rank = 0; rank < ranks_; ++rank) {
      fuzzers.emplace_back([&, rank] {
        std::mt19937_64 rng(1000 * round + rank);
        int bound =
            example::TokensFor((*world)[rank].runner->problem(), rank, 0);  // the layer above
        for (int i = 0; i < kRequestsPerRound; ++i) {
          outcomes[rank].push_back(SendOne(*world, rank, group, bound, rng));
        }
      });
    }
    // The other group keeps serving while the fuzzing runs.
    std::atomic<bool> fuzzing{true};
    std::thread checker([&] {
      while (fuzzing.load()) {
        const Status layer = RunGoodLayer(*good, good_layers++);
        if (!layer.ok()) {
          failures.push_back(
              fmt::format("round {}: the other group's layer failed: {}", round, layer.ToString()));
          return;
        }
        // Leaves a core to the daemon on a 2-core machine.
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
    for (std::thread& t : fuzzers) t.join();
    fuzzing.store(false);
    checker.join();

    for (const auto& rank_outcomes : outcomes) {
      for (const Outcome& o : rank_outcomes) {
        ++codes[o.code];
        if (log.is_open()) {
          log << o.request << " -> " << StatusCodeName(o.code) << " " << o.took.count()
              << " ms: " << o.message << "\n";
        }
        if (!IsCanonicalError(o.code)) {
          failures.push_back(
              fmt::format("{} -> {}: {}", o.request, StatusCodeName(o.code), o.message));
        } else if (o.took >= kAnswerBound - std::chrono::milliseconds(500)) {
          failures.push_back(fmt::format("{} -> no answer within {} s ({}: {})", o.request,
                                         kAnswerBound.count(), StatusCodeName(o.code), o.message));
        } else if (o.code != StatusCode::kOk && o.message.empty()) {
          failures.push_back(
              fmt::format("{} -> {} without a message", o.request, StatusCodeName(o.code)));
        } else if ((o.code == StatusCode::kInvalidArgument || o.code == StatusCode::kNotFound) &&
                   !NamesTheChange(o.message, o.change) &&
                   // A routing value refused is the buffer's content, which changed ops that
                   // succeeded may have written over: no field to name.
                   !NamesARoutingValue(o)) {
          failures.push_back(fmt::format("{} -> {}, naming neither the field nor the value: {}",
                                         o.request, StatusCodeName(o.code), o.message));
        } else if (o.message.size() > kMaxAnswerMessageBytes) {
          failures.push_back(
              fmt::format("{} -> a message of {} bytes", o.request, o.message.size()));
        }
      }
    }
    world->clear();  // the fuzzing sessions end
  }

  // What outlives a session goes explicitly; then the daemon holds what it held before.
  {
    auto cleanup = ConnectOrDie(daemon_->address());
    for (const auto& [id, secret] : unary_sessions_) {
      v1::CloseSessionRequest close;
      close.set_session_id(id);
      v1::CloseSessionResponse closed;
      CallWithSecret(cleanup->stub(), &v1::Epd::Stub::CloseSession, close, secret, &closed);
    }
    for (int rank = 0; rank < ranks_; ++rank) {
      auto session = cleanup->OpenSession(rank, "fuzz-cleanup");
      ASSERT_TRUE(session.ok()) << session.status().ToString();
      for (const auto& [handle_rank, name] : persistent_handles_) {
        if (handle_rank != rank) continue;
        auto attached = (*session)->AttachHandle(name);
        ASSERT_TRUE(attached.ok()) << name << ": " << attached.status().ToString();
        ASSERT_EPD_OK((*session)->DestroyHandle(attached->handle_id()));
      }
      if (rank == 0) {
        for (const std::string& name : persistent_groups_) {
          EXPECT_EPD_OK((*session)->DestroyGroup(name));
        }
      }
    }
  }
  const v1::Stats after = WaitForStats(*stats_client, [&](const v1::Stats& s) {
    return s.live_bytes() == baseline->live_bytes() &&
           s.sessions_open() == baseline->sessions_open();
  });
  EXPECT_EQ(after.live_bytes(), baseline->live_bytes()) << "bytes still held by fuzzed sessions";
  EXPECT_EQ(after.sessions_open(), baseline->sessions_open()) << "sessions left open";
  EXPECT_LE(WaitAtMost([&] { return daemon_->open_fds(); }, baseline_fds), baseline_fds)
      << "file descriptors the daemon still holds";
  EXPECT_LE(WaitAtMost([&] { return EpdShmObjects(daemon_->pid()); }, baseline_shm), baseline_shm)
      << "shared-memory objects left in /dev/shm";
  EXPECT_EPD_OK(RunGoodLayer(*good, good_layers));

  const std::string summary = CodeSummary(codes);
  std::cout << "answers:" << summary << "; layers of the other group: " << good_layers << "\n";
  // The requests reached the daemon's checks (not all turned away at the door) and some
  // changes were harmless (the templates are valid requests).
  const int total = rounds * kRequestsPerRound * ranks_;
  EXPECT_GE(codes[StatusCode::kInvalidArgument], total / 10) << summary;
  EXPECT_GE(codes[StatusCode::kOk], total / 20) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

}  // namespace
}  // namespace epd::testing
