// Shared pieces of the fuzz tests (request_fuzz_test.cc, stream_fuzz_test.cc,
// cluster_fuzz_test.cc): the daemon they drive, which answers bad input may get, how one
// changed request and its answer are kept, and the scale knob. Their groups start from
// SmallProblem (client_test_support.h); requests are changed by proto_mutator.h.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/grpc_status.h"
#include "common/session_secret.h"
#include "tests/integration/client_test_support.h"
#include "tests/integration/proto_mutator.h"

namespace epd::testing {

// No answer within this is a hang: every wait of the daemon is bounded by its op timeout.
inline constexpr auto kAnswerBound = std::chrono::seconds(10);
inline constexpr int kFuzzOpTimeoutMs = 1000;

// EPD_FUZZ_SCALE=N runs N times the requests of each fuzz test, with other seeds beyond the
// first N = 1 (a longer hunt by hand; CI runs N = 1).
int FuzzScale();

// Whether bad input may be answered with `code`: any canonical code but INTERNAL, UNKNOWN,
// UNIMPLEMENTED and DATA_LOSS (which would mean the daemon itself went wrong).
bool IsCanonicalError(StatusCode code);

// " OK 12 INVALID_ARGUMENT 3 ...": a tally of answers, for the test's output.
std::string CodeSummary(const std::map<StatusCode, int>& codes);

// What one changed request got.
struct Outcome {
  std::string request;  // "<rpc> rank <r>: <change>"
  StatusCode code = StatusCode::kOk;
  std::string message;
  std::chrono::milliseconds took{0};
  Mutation change;
};

// A unary call as a frontend makes it (its session's secret in the header), bounded by
// kAnswerBound and timed.
template <typename Request, typename Response>
Outcome CallWithSecret(v1::Epd::Stub& stub,
                       grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                       const Request& request, const std::string& secret, Response* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kAnswerBound);
  context.AddMetadata(std::string(kSessionSecretHeader), secret);
  const auto start = std::chrono::steady_clock::now();
  const Status status = FromGrpcStatus((stub.*method)(&context, request, response));
  Outcome outcome;
  outcome.code = status.code();
  outcome.message = std::string(status.message());
  outcome.took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  return outcome;
}

// The daemon a fuzz test drives, with a short op timeout. EPD_FUZZ_BACKEND=cuda: `epd
// --backend cuda` over min(GPUs, 2) ranks (a GPU host: tensors in device memory, buffers
// registered by CUDA IPC handle; skipped without a GPU); else the cpu backend with 2 ranks.
class FuzzDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override;
  // Frontends (one per rank, each its own connection and session) of a new group `group`.
  StatusOr<std::vector<RankClient>> MakeWorld(const std::string& group,
                                              const example::Problem& problem);

  std::unique_ptr<DaemonProcess> daemon_;
  int ranks_ = 2;  // of every group, and fuzzing threads
  example::Problem problem_;
};

}  // namespace epd::testing
