// The client-side expectations (client/examples/moe_math.h, written from docs/design.md alone)
// against the daemon's reference ops, without a daemon: every rank's receive region is a
// shm object read through HandleView, filled by reference::DispatchReceive, transformed by the
// client's RunExperts and combined by reference::Combine. Both must agree bit for bit.
#include <gtest/gtest.h>

#include <tuple>

#include "client/epd/handle_view.h"
#include "client/epd/shared_memory.h"
#include "client/examples/moe_math.h"
#include "daemon/backends/cpu/reference_ops.h"

namespace epd {
namespace {

using example::Problem;

GroupConfig CoreConfig(const Problem& p) {
  GroupConfig c;
  c.name = "math";
  for (int r = 0; r < p.ranks; ++r) c.ranks.push_back(r);
  c.experts = p.experts;
  c.hidden = p.hidden;
  c.max_tokens_per_rank = p.max_tokens;
  c.top_k = p.top_k;
  c.dtype = p.token_dtype();
  c.layout = p.expert_major() ? Layout::kExpertMajor : Layout::kRankMajor;
  return c;
}

// A HandleInfo as the daemon would describe rank `rank`'s exported region in `shm`.
v1::HandleInfo DescribeRegion(const Problem& p, const HandleLayout& h,
                              const SharedMemoryBuffer& shm) {
  v1::HandleInfo info;
  info.set_handle_id(1);
  *info.mutable_source() = shm.Source();
  *info.mutable_config() = p.Config("math");
  v1::HandleBuffers* b = info.mutable_buffers();
  b->set_recv_rows(h.recv_rows);
  b->set_recv_x_offset(h.recv_x_offset);
  b->set_recv_src_offset(h.recv_src_offset);
  b->set_recv_weights_offset(h.recv_weights_offset);
  b->set_recv_topk_idx_offset(h.recv_topk_idx_offset);
  b->set_recv_topk_weights_offset(h.recv_topk_weights_offset);
  b->set_recv_counts_offset(h.recv_counts_offset);
  b->set_recv_offsets_offset(h.recv_offsets_offset);
  b->set_total_bytes(h.exported_bytes);
  return info;
}

class ClientMoeMathTest : public ::testing::TestWithParam<std::tuple<int, v1::Layout, v1::DType>> {
};

TEST_P(ClientMoeMathTest, ExpectedOutputMatchesTheReferenceOps) {
  const auto [ranks, layout, dtype] = GetParam();
  Problem p;
  p.ranks = ranks;
  p.experts = 2 * ranks;
  p.hidden = 16;
  p.max_tokens = 8;
  p.top_k = std::min(3, p.experts);
  p.dtype = dtype;
  p.layout = layout;
  const GroupConfig config = CoreConfig(p);
  const HandleLayout h = ComputeHandleLayout(config);

  for (int iteration = 0; iteration < 3; ++iteration) {
    std::vector<example::RankInputs> in;
    std::vector<std::vector<int32_t>> idx(ranks), counts(ranks);
    std::vector<std::vector<float>> weights(ranks);
    std::vector<reference::SourceRank> sources(ranks);
    for (int r = 0; r < ranks; ++r) {
      in.push_back(example::MakeInputs(p, 21, r, iteration, example::TokensFor(p, r, iteration),
                                       /*dyadic_weights=*/false));
      const int n = in[r].num_tokens;
      idx[r].resize(static_cast<size_t>(n) * p.top_k);
      weights[r].resize(idx[r].size());
      counts[r].resize(p.experts);
      ASSERT_TRUE(reference::BindRouting(config, in[r].topk_idx.data(), DType::kInt32,
                                         in[r].weights.data(), n, idx[r].data(), weights[r].data(),
                                         counts[r].data())
                      .ok());
      sources[r] = {n, in[r].x.data(), idx[r].data(), weights[r].data(), counts[r].data()};
    }
    std::vector<std::unique_ptr<SharedMemoryBuffer>> regions;
    std::vector<std::unique_ptr<HandleView>> views;
    std::vector<const void*> expert_out;
    for (int d = 0; d < ranks; ++d) {
      regions.push_back(std::move(SharedMemoryBuffer::Create(h.exported_bytes)).value());
      reference::DispatchReceive(config, d, sources,
                                 reference::ReceiveBuffersAt(regions[d]->data(), h));
      auto view = HandleView::Open(DescribeRegion(p, h, *regions[d]));
      ASSERT_TRUE(view.ok()) << view.status().ToString();
      example::RunExperts(p, d, **view, example::ScaleByExpertPlusOne);
      expert_out.push_back((*view)->recv_x());
      views.push_back(std::move(view).value());
    }
    for (int r = 0; r < ranks; ++r) {
      std::vector<int32_t> slot(idx[r].size());
      reference::ComputeSlots(config, r, sources, slot.data());
      std::vector<uint8_t> out(in[r].x.size());
      reference::Combine(config, sources[r], slot.data(), expert_out, out.data());
      const auto expected = example::ExpectedOutput(p, in[r], example::ScaleByExpertPlusOne);
      const int64_t bad = example::FirstMismatch(p, in[r].num_tokens, out.data(), expected.data());
      EXPECT_EQ(bad, -1) << "rank " << r << " iteration " << iteration << ": "
                         << example::DescribeElement(p, bad, out.data(), expected.data());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ClientMoeMathTest,
    ::testing::Combine(::testing::Values(1, 2, 4),
                       ::testing::Values(v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR),
                       ::testing::Values(v1::DTYPE_BF16, v1::DTYPE_FP16, v1::DTYPE_FP32)));

TEST(ClientHandleViewTest, PointersFollowTheLayout) {
  Problem p;
  p.ranks = 2;
  p.experts = 4;
  p.hidden = 16;
  p.max_tokens = 8;
  for (const v1::Layout layout : {v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR}) {
    p.layout = layout;
    const HandleLayout h = ComputeHandleLayout(CoreConfig(p));
    auto shm = SharedMemoryBuffer::Create(h.exported_bytes);
    ASSERT_TRUE(shm.ok());
    auto view = HandleView::Open(DescribeRegion(p, h, **shm));
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    // The view is its own mapping: markers written through the owner show where it points.
    *(*shm)->at<uint8_t>(h.recv_x_offset) = 0xa1;
    *(*shm)->at<int32_t>(h.recv_counts_offset) = 77;
    EXPECT_EQ((*view)->recv_rows(), static_cast<int64_t>(h.recv_rows));
    EXPECT_EQ((*view)->row_bytes(), 32u);
    EXPECT_EQ(*static_cast<uint8_t*>((*view)->recv_x()), 0xa1);
    EXPECT_EQ((*view)->recv_counts()[0], 77);
    const bool em = layout == v1::LAYOUT_EXPERT_MAJOR;
    EXPECT_EQ((*view)->recv_src() != nullptr, em);
    EXPECT_EQ((*view)->recv_weights() != nullptr, em);
    EXPECT_EQ((*view)->recv_offsets() != nullptr, em);
    EXPECT_EQ((*view)->recv_topk_idx() != nullptr, !em);
    EXPECT_EQ((*view)->recv_topk_weights() != nullptr, !em);
    const v1::TensorRef ref = (*view)->RecvXRef();
    EXPECT_EQ(ref.offset_bytes(), h.recv_x_offset);
    ASSERT_EQ(ref.shape_size(), 2);
    EXPECT_EQ(ref.shape(0), static_cast<int64_t>(h.recv_rows));
    EXPECT_EQ(ref.shape(1), 16);
  }
}

TEST(ClientHandleViewTest, RefusesARegionSmallerThanItsBuffers) {
  Problem p;
  const HandleLayout h = ComputeHandleLayout(CoreConfig(p));
  auto shm = SharedMemoryBuffer::Create(h.exported_bytes);
  ASSERT_TRUE(shm.ok());
  v1::HandleInfo info = DescribeRegion(p, h, **shm);
  info.mutable_source()->set_size(h.exported_bytes / 2);
  EXPECT_EQ(HandleView::Open(info).status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace epd
