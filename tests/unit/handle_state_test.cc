// The handle's op outcome state machine: which op may run after which outcome.
#include "daemon/core/handle_state.h"

#include <gtest/gtest.h>

namespace epd {
namespace {

bool Ready(const HandleOutcomes& h, CollectiveKind kind) { return h.CheckReadyFor(kind).ok(); }

TEST(HandleOutcomesTest, CombineNeedsADispatchAfterTheLatestRouting) {
  HandleOutcomes h;
  EXPECT_TRUE(Ready(h, CollectiveKind::kDispatch));
  Status combine = h.CheckReadyFor(CollectiveKind::kCombine);
  EXPECT_EQ(combine.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(combine.message().find("dispatch before combine"), std::string::npos);

  h.RecordRouting(h.BeginOp(), OkStatus());
  h.RecordDispatch(h.BeginOp(), OkStatus());
  EXPECT_TRUE(Ready(h, CollectiveKind::kCombine));
  h.RecordRouting(h.BeginOp(), OkStatus());  // new routing: the old slots no longer apply
  EXPECT_FALSE(Ready(h, CollectiveKind::kCombine));
  h.RecordDispatch(h.BeginOp(), OkStatus());
  EXPECT_TRUE(Ready(h, CollectiveKind::kCombine));
}

TEST(HandleOutcomesTest, FailedRoutingOrDispatchBlocksWhatDependsOnIt) {
  HandleOutcomes h;
  h.RecordRouting(h.BeginOp(), InvalidArgumentError("topk_idx[0, 0] = 99"));
  Status dispatch = h.CheckReadyFor(CollectiveKind::kDispatch);
  EXPECT_EQ(dispatch.message(), "the last UpdateHandle failed: topk_idx[0, 0] = 99");
  h.RecordRouting(h.BeginOp(), OkStatus());
  h.RecordDispatch(h.BeginOp(), ResourceExhaustedError("capacity"));
  EXPECT_TRUE(Ready(h, CollectiveKind::kDispatch));
  EXPECT_EQ(h.CheckReadyFor(CollectiveKind::kCombine).message(),
            "the last Dispatch failed: capacity");
}

TEST(HandleOutcomesTest, ALateDeviceErrorCountsOnlyForTheOpItBelongsTo) {
  HandleOutcomes h;
  const uint64_t first = h.BeginOp();
  h.RecordRouting(first, OkStatus());
  h.RoutingDeviceError(first, InvalidArgumentError("bad expert"));
  EXPECT_FALSE(Ready(h, CollectiveKind::kDispatch));
  const uint64_t second = h.BeginOp();
  h.RecordRouting(second, OkStatus());
  h.RoutingDeviceError(first, InvalidArgumentError("stale"));  // replaced by `second`
  EXPECT_TRUE(Ready(h, CollectiveKind::kDispatch));
  const uint64_t dispatch = h.BeginOp();
  h.RecordDispatch(dispatch, OkStatus());
  h.DispatchDeviceError(dispatch, ResourceExhaustedError("overflow"));
  EXPECT_EQ(h.CheckReadyFor(CollectiveKind::kCombine).message(),
            "the last Dispatch failed: overflow");
}

}  // namespace
}  // namespace epd
