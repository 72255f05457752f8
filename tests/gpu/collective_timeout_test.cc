// A rank that never joins a collective: its peers fail with DEADLINE_EXCEEDED naming the
// rank and the flag they waited for, and the group works again once every rank has issued
// the same number of collectives (sequence numbers line up; nothing needs resetting).
#include <gtest/gtest.h>

#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

void ExpectTimeout(const Status& s, const std::string& flag) {
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_NE(s.message().find(flag), std::string::npos) << s.message();
}

TEST(CudaCollectiveTimeout, LoneRankTimesOutNamingThePeerAndTheGroupRecovers) {
  EPD_REQUIRE_GPUS(2);
  CudaBackendOptions options;
  options.devices = {0, 1};
  options.op_timeout = std::chrono::milliseconds(300);
  options.create_nccl_comms = false;
  auto created = CreateCudaBackend(options);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Backend& backend = **created;
  CaseSpec spec;
  spec.name = "timeouts";
  spec.ranks = 2;
  spec.experts = 8;
  spec.hidden = 256;
  spec.tokens = 16;
  spec.top_k = 2;
  {
    MoeHarness harness(backend, spec);
    const std::vector<int> n = {16, 16};
    auto inputs = harness.MakeInputs(RoutingKind::kRandom, n, 5, false, true);
    for (const Status& s : harness.Update(inputs)) ASSERT_TRUE(s.ok()) << s.ToString();

    // A rank that rejects its arguments on the host launches nothing, but the op still
    // counts, so ranks stay in step: a rejected dispatch on each rank, then a full round.
    auto rejected_dispatch = [&](int r) {
      std::vector<DispatchArgs> all(2);
      for (int d = 0; d < 2; ++d) all[d].handle = &harness.handle(d);
      all[r].x = TensorView{nullptr, spec.dtype, {0, spec.hidden}};  // 16 tokens are bound
      return backend.Dispatch(*harness.group(), r, all);
    };
    EXPECT_EQ(rejected_dispatch(0).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(rejected_dispatch(1).code(), StatusCode::kInvalidArgument);
    for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectDispatchMatches(inputs, n);

    // Each rank launches one dispatch alone: rank 0 never sees rank 1's counts; rank 1 sees
    // rank 0's (published before it gave up) but never its rows-written flag.
    std::vector<Status> dispatch_alone(2);
    for (int r = 0; r < 2; ++r) {
      DeviceBuffer x(r, 16 * 256 * 2);
      std::vector<DispatchArgs> all(2);
      for (int d = 0; d < 2; ++d) all[d].handle = &harness.handle(d);
      all[r].x = TensorView{x.data(), spec.dtype, {16, spec.hidden}};
      Status s = backend.Dispatch(*harness.group(), r, all);
      dispatch_alone[r] = s.ok() ? WaitComplete(backend, harness.handle(r)) : s;
    }
    ExpectTimeout(dispatch_alone[0], "group rank 1's per-expert counts");
    ExpectTimeout(dispatch_alone[1], "group rank 0's rows-written flag");

    // Lone combines: rank 0 waits for rank 1's expert output; rank 1 then finds rank 0's
    // start flag but never its finished-reading flag.
    std::vector<Status> combine_alone(2);
    for (int r = 0; r < 2; ++r) {
      DeviceBuffer out(r, 16 * 256 * 2);
      std::vector<CombineArgs> all(2);
      for (int d = 0; d < 2; ++d) all[d].handle = &harness.handle(d);
      all[r].out = TensorView{out.data(), spec.dtype, {16, spec.hidden}};
      Status s = backend.Combine(*harness.group(), r, all);
      combine_alone[r] = s.ok() ? WaitComplete(backend, harness.handle(r)) : s;
    }
    ExpectTimeout(combine_alone[0], "group rank 1's expert-output-ready flag");
    ExpectTimeout(combine_alone[1], "group rank 0's finished-reading flag");

    // Every rank issued the same number of collectives: the group serves again.
    inputs = harness.MakeInputs(RoutingKind::kSparse, n, 6, true, true);
    for (const Status& s : harness.Update(inputs)) ASSERT_TRUE(s.ok()) << s.ToString();
    for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectDispatchMatches(inputs, n);
    for (const Status& s : harness.Combine(false, 9)) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectCombineMatches(inputs, n);
  }
}

}  // namespace
}  // namespace epd::gputest
