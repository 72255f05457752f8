// What the cuda backend's groups spanning daemons decide without a GPU: the sizes of their NCCL
// messages (whole, or the rows routed by the headers), what they refuse, and how daemons agree
// on a communicator generation and its unique id through the leader's store (an in-memory
// store here).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "daemon/backends/cuda/span_rendezvous.h"
#include "daemon/backends/cuda/span_support.h"
#include "tests/unit/in_memory_store.h"

namespace epd::cuda {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

GroupConfig Spanning(int node, int hidden = 7168) {
  GroupConfig c;
  c.name = "span";
  c.ranks = {0, 1};
  c.experts = 256;
  c.hidden = hidden;
  c.max_tokens_per_rank = 128;
  c.top_k = 8;
  c.dtype = DType::kBf16;
  c.spans_nodes = true;
  c.span = GroupConfig::Span{node, 2, 1};
  return c;
}

TEST(SpanMessagesTest, DispatchMessageHoldsHeaderEntriesAndTRowsAligned) {
  // The standard shape: H 7168 bf16, K 8, E 256, T 128.
  const kernels::SpanDispatchMessage m = SpanDispatchMessageOf(Spanning(0));
  EXPECT_EQ(m.entry_words, 1 + 3 * 8);
  EXPECT_EQ(m.entries_offset, 1280);       // (2 + 256 + 2) int32 = 1040 bytes, 256-aligned
  EXPECT_EQ(m.rows_offset, 1280 + 12800);  // 128 entries of 25 words
  EXPECT_EQ(m.row_bytes, 7168 * 2);
  EXPECT_EQ(m.bytes, 1280 + 12800 + 128 * 14336);
  for (int64_t offset : {m.entries_offset, m.rows_offset, m.bytes}) {
    EXPECT_EQ(offset % kernels::kSpanMessageAlign, 0) << offset;
  }
}

TEST(SpanMessagesTest, ReturnMessageHasKRowsPerTokenExpertMajorAndOneRankMajor) {
  GroupConfig c = Spanning(0, 64);
  const kernels::SpanReturnMessage expert = SpanReturnMessageOf(c);
  EXPECT_EQ(expert.rows_per_token, 8);
  EXPECT_EQ(expert.bytes, 256 + 128 * 8 * 128);
  c.layout = Layout::kRankMajor;
  const kernels::SpanReturnMessage rank = SpanReturnMessageOf(c);
  EXPECT_EQ(rank.rows_per_token, 1);
  EXPECT_EQ(rank.bytes, 256 + 128 * 128);
  c.dtype = DType::kFp32;
  EXPECT_EQ(SpanReturnMessageOf(c).row_bytes, 64 * 4);
}

TEST(SpanMessagesTest, BytesSentAndHeldFollowTheWorldSize) {
  GroupConfig c = Spanning(0, 64);
  c.ranks = {0, 1, 2, 3};
  c.span.nodes = 4;
  const int64_t dispatch = SpanDispatchMessageOf(c).bytes, ret = SpanReturnMessageOf(c).bytes;
  EXPECT_EQ(SpanDispatchBytesSent(c), 3 * dispatch);
  EXPECT_EQ(SpanCombineBytesSent(c), 3 * ret);
  // Send and receive of both directions, plus the plan: 1 + L + 2 * L * R + R = 581 int32
  // (L = 64), 2324 bytes, 256-aligned.
  EXPECT_EQ(SpanHandleBytesOf(c), 8 * dispatch + 8 * ret + 2560);
  EXPECT_EQ(kernels::SpanPlanWords(64, 4), 1 + 64 + 256 + 4 + 256);
  EXPECT_EQ(kernels::SpanPlanReturnBaseWord(64, 4, 0, 0), 1 + 64 + 256 + 4);
  EXPECT_EQ(kernels::SpanPlanReturnBaseWord(64, 4, 3, 63), kernels::SpanPlanWords(64, 4) - 1);
  EXPECT_EQ(kernels::SpanPlanFirstRowWord(64, 4, 3), 1 + 64 + 256 + 3);
}

TEST(SpanMessagesTest, TheHeaderHoldsEveryExpertAndEveryRank) {
  // E 256 and R 64: (2 + 256 + 64) int32 = 1288 bytes, 256-aligned.
  GroupConfig c = Spanning(0, 64);
  c.ranks.clear();
  for (int r = 0; r < 64; ++r) c.ranks.push_back(r);
  c.span.nodes = 64;
  EXPECT_EQ(SpanDispatchMessageOf(c).entries_offset, 1536);
  c.ranks.resize(2);
  c.span.nodes = 2;
  EXPECT_EQ(SpanDispatchMessageOf(c).entries_offset, 1280);
}

TEST(SpanMessagesTest, HighThroughputReturnsOnePreReducedRowPerToken) {
  GroupConfig c = Spanning(1, 64);
  c.algorithm = Algorithm::kHighThroughput;
  const kernels::SpanShape s = SpanShapeOf(c, 1);
  EXPECT_EQ(s.high_throughput, 1);
  EXPECT_EQ(s.rank_major, 0);
  EXPECT_EQ(s.ret.rows_per_token, 1);
  EXPECT_EQ(SpanReturnMessageOf(c).bytes, 256 + 128 * 128);
  // The dispatch buffers are the low-latency ones: T entries and T rows.
  GroupConfig ll = Spanning(1, 64);
  EXPECT_EQ(SpanDispatchMessageOf(c).bytes, SpanDispatchMessageOf(ll).bytes);
  EXPECT_EQ(SpanShapeOf(ll, 1).high_throughput, 0);
}

TEST(SpanMessagesTest, ShapeCarriesTheGroupConstantsAndBothMessages) {
  GroupConfig c = Spanning(1, 64);
  c.layout = Layout::kRankMajor;
  const kernels::SpanShape s = SpanShapeOf(c, 1);
  EXPECT_EQ(s.world_size, 2);
  EXPECT_EQ(s.rank, 1);
  EXPECT_EQ(s.experts, 256);
  EXPECT_EQ(s.local_experts, 128);
  EXPECT_EQ(s.top_k, 8);
  EXPECT_EQ(s.max_tokens, 128);
  EXPECT_EQ(s.rank_major, 1);
  EXPECT_EQ(s.ret.row_bytes, 128);
  EXPECT_EQ(s.dispatch.bytes, SpanDispatchMessageOf(c).bytes);
  EXPECT_EQ(s.ret.rows_per_token, 1);
}

TEST(SpanSupportTest, BothAlgorithmsInEveryTokenDtypeAreSupported) {
  for (DType dtype : {DType::kBf16, DType::kFp16, DType::kFp32}) {
    GroupConfig c = Spanning(0);
    c.dtype = dtype;
    EXPECT_TRUE(CheckSpanningSupported(c).ok()) << DTypeName(dtype);
    c.layout = Layout::kRankMajor;
    EXPECT_TRUE(CheckSpanningSupported(c).ok()) << DTypeName(dtype);
    c.algorithm = Algorithm::kHighThroughput;
    EXPECT_TRUE(CheckSpanningSupported(c).ok()) << DTypeName(dtype);
  }
}

TEST(SpanSupportTest, Fp8DispatchIsSupportedAndTooManyRanksAreRefused) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    GroupConfig fp8 = Spanning(0);
    fp8.dispatch_format = DispatchFormat::kFp8E4m3;
    fp8.scale_format = format;
    EXPECT_TRUE(CheckSpanningSupported(fp8).ok());
    fp8.algorithm = Algorithm::kHighThroughput;
    EXPECT_TRUE(CheckSpanningSupported(fp8).ok());
  }
  GroupConfig huge = Spanning(0, 64);
  huge.ranks.clear();
  for (int r = 0; r <= kernels::kMaxSpanningRanks; ++r) huge.ranks.push_back(r);
  const Status s = CheckSpanningSupported(huge);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("group 'span'"));
  EXPECT_THAT(s.message(), HasSubstr("at most 4096"));
}

TEST(SpanMessagesTest, Fp8DispatchCarriesE4m3RowsAndTheirScalesBeforeThem) {
  // H 7168, T 128: 56 scales per row (fp32: 224 bytes; ue8m0: 56), then rows of 7168 e4m3
  // bytes, last (a high-throughput message ends after the rows it carries).
  GroupConfig c = Spanning(0);
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  const kernels::SpanDispatchMessage fp32 = SpanDispatchMessageOf(c);
  EXPECT_EQ(fp32.row_bytes, 7168);
  EXPECT_EQ(fp32.scales_offset, 1280 + 12800);
  EXPECT_EQ(fp32.scale_row_bytes, 224);
  EXPECT_EQ(fp32.rows_offset, fp32.scales_offset + 128 * 224);
  EXPECT_EQ(fp32.bytes, fp32.rows_offset + 128 * 7168);
  c.scale_format = ScaleFormat::kUe8m0;
  const kernels::SpanDispatchMessage ue8m0 = SpanDispatchMessageOf(c);
  EXPECT_EQ(ue8m0.scale_row_bytes, 56);
  EXPECT_EQ(ue8m0.rows_offset, ue8m0.scales_offset + 7168);  // 128 x 56, 256-aligned
  EXPECT_EQ(SpanShapeOf(c, 0).ue8m0_scales, 1);
  // Combine returns the experts' outputs in the token dtype.
  EXPECT_EQ(SpanShapeOf(c, 0).ret.row_bytes, 7168 * 2);
  EXPECT_EQ(SpanReturnMessageOf(c).row_bytes, 7168 * 2);
  // Without fp8 the message has no scales.
  const kernels::SpanDispatchMessage token = SpanDispatchMessageOf(Spanning(0));
  EXPECT_EQ(token.scale_row_bytes, 0);
  EXPECT_EQ(token.rows_offset, token.scales_offset);
}

TEST(SpanMessagesTest, HighThroughputSendsTheHeaderThenOnlyTheRowsRouted) {
  GroupConfig c = Spanning(0);
  c.algorithm = Algorithm::kHighThroughput;
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  const kernels::SpanShape s = SpanShapeOf(c, 0);
  EXPECT_EQ(kernels::SpanHeaderWords(256, 2), 260);
  // The body: entries and scales of all T tokens, then the rows sent.
  const int64_t fixed = 12800 + 128 * 224;
  EXPECT_EQ(kernels::SpanDispatchBodyBytes(s.dispatch, 0), fixed);
  EXPECT_EQ(kernels::SpanDispatchBodyBytes(s.dispatch, 3), fixed + 3 * 7168);
  // Header + body of a full message is the whole message.
  EXPECT_EQ(s.dispatch.entries_offset + kernels::SpanDispatchBodyBytes(s.dispatch, 128),
            s.dispatch.bytes);
  // The return message: its header, then one token-dtype row per row dispatched.
  EXPECT_EQ(kernels::SpanReturnBytes(s.ret, 0), 256);
  EXPECT_EQ(kernels::SpanReturnBytes(s.ret, 5), 256 + 5 * 7168 * 2);
  EXPECT_EQ(kernels::SpanReturnBytes(s.ret, 128), s.ret.bytes);
}

// Headers as the exchange leaves them on the host: header p is p's message to `rank`, its
// words from `first` on set to values[p] (RowWords: rows to each rank; kExpertWords:
// selections of each expert).
constexpr int kExpertWords = kernels::kSpanHeaderFixedWords;
int RowWords(const kernels::SpanShape& s) { return kernels::kSpanHeaderFixedWords + s.experts; }
std::vector<int32_t> Headers(const kernels::SpanShape& s,
                             const std::vector<std::vector<int32_t>>& values,
                             const std::vector<int32_t>& status, int first) {
  const int64_t words = kernels::SpanHeaderWords(s.experts, s.world_size);
  std::vector<int32_t> headers(s.world_size * words, 0);
  for (int p = 0; p < s.world_size; ++p) {
    headers[p * words] = status[p];
    for (size_t i = 0; i < values[p].size(); ++i) headers[p * words + first + i] = values[p][i];
  }
  return headers;
}

TEST(SpanSupportTest, RowsOfEachMessageComeFromTheSendersHeader) {
  GroupConfig c = Spanning(0, 64);
  c.algorithm = Algorithm::kHighThroughput;
  c.ranks = {0, 1, 2};
  c.span.nodes = 3;
  const kernels::SpanShape s = SpanShapeOf(c, 1);
  // rows_to[p][d]: p's rows to d (every message of p carries the same row words).
  const std::vector<std::vector<int32_t>> rows_to = {{5, 7, 0}, {4, 9, 128}, {1, 0, 2}};
  const std::vector<int32_t> ok(3, kernels::kSpanMessageOk);
  SpanRows rows = SpanRowsOf(s, Headers(s, rows_to, ok, RowWords(s)).data());
  EXPECT_EQ(rows.in, (std::vector<int64_t>{7, 9, 0}));     // p's rows to rank 1
  EXPECT_EQ(rows.out, (std::vector<int64_t>{4, 9, 128}));  // rank 1's own header

  // A source that abandoned sends no rows; an abandoning rank sends none to anyone.
  std::vector<int32_t> abandoned = ok;
  abandoned[0] = kernels::kSpanMessageAbandoned;
  rows = SpanRowsOf(s, Headers(s, rows_to, abandoned, RowWords(s)).data());
  EXPECT_EQ(rows.in, (std::vector<int64_t>{0, 9, 0}));
  abandoned[1] = kernels::kSpanMessageAbandoned;
  rows = SpanRowsOf(s, Headers(s, rows_to, abandoned, RowWords(s)).data());
  EXPECT_EQ(rows.out, (std::vector<int64_t>{0, 0, 0}));

  // A corrupt count is clamped to [0, T] on both sides alike.
  rows = SpanRowsOf(s, Headers(s, {{-3, 500, 0}, {0, 0, 0}, {0, 0, 0}}, ok, RowWords(s)).data());
  EXPECT_EQ(rows.in[0], 128);
  const kernels::SpanShape s0 = SpanShapeOf(c, 0);
  rows = SpanRowsOf(s0, Headers(s0, {{-3, 500, 0}, {0, 0, 0}, {0, 0, 0}}, ok, RowWords(s0)).data());
  EXPECT_EQ(rows.out, (std::vector<int64_t>{0, 128, 0}));
}

TEST(SpanSupportTest, ExpertMajorReturnsCarryEachPairsSelections) {
  GroupConfig c = Spanning(0, 64);
  c.experts = 6;  // L = 2
  c.top_k = 2;
  c.ranks = {0, 1, 2};
  c.span.nodes = 3;
  EXPECT_TRUE(SpanReadsHeaders(c));
  const kernels::SpanShape s = SpanShapeOf(c, 1);
  // counts[p]: p's selections of experts 0..5 (rank d holds experts 2d, 2d + 1).
  const std::vector<std::vector<int32_t>> counts = {
      {1, 2, 3, 4, 0, 0}, {5, 0, 0, 6, 7, 1}, {0, 0, 2, 2, 9, 9}};
  const std::vector<int32_t> ok(3, kernels::kSpanMessageOk);
  SpanRows rows = SpanRowsOf(s, Headers(s, counts, ok, kExpertWords).data());
  EXPECT_EQ(rows.in, (std::vector<int64_t>{7, 6, 4}));   // p's selections of experts 2, 3
  EXPECT_EQ(rows.out, (std::vector<int64_t>{5, 6, 8}));  // rank 1's of each rank's experts
  // The return message of the standard shape: its header, then one row per selection.
  EXPECT_EQ(kernels::SpanReturnBytes(s.ret, 7), 256 + 7 * 64 * 2);

  // An abandoned source sends and gets nothing; a corrupt sum is clamped to [0, T x K].
  std::vector<int32_t> abandoned = ok;
  abandoned[2] = kernels::kSpanMessageAbandoned;
  rows = SpanRowsOf(s, Headers(s, counts, abandoned, kExpertWords).data());
  EXPECT_EQ(rows.in, (std::vector<int64_t>{7, 6, 0}));
  rows = SpanRowsOf(s, Headers(s, {{0, 0, -9, 1, 0, 0}, {0, 0, 200, 100, 0, 0}, {0, 0, 0, 0, 0, 0}},
                               ok, kExpertWords)
                           .data());
  EXPECT_EQ(rows.in, (std::vector<int64_t>{0, 256, 0}));

  // Rank-major groups return whole messages: the host does not read their headers.
  c.layout = Layout::kRankMajor;
  EXPECT_FALSE(SpanReadsHeaders(c));
  c.algorithm = Algorithm::kHighThroughput;
  EXPECT_TRUE(SpanReadsHeaders(c));
}

TEST(SpanRendezvousTest, HexRoundTripsEveryByteAndRefusesOtherText) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  const std::string hex = SpanRendezvous::ToHex(bytes);
  EXPECT_EQ(hex.size(), 512u);
  auto back = SpanRendezvous::FromHex(hex);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, bytes);
  EXPECT_EQ(SpanRendezvous::FromHex("abc").status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(SpanRendezvous::FromHex("0g").status().message(), HasSubstr("'0g'"));
}

TEST(SpanRendezvousTest, TheRootPublishesAndTheOtherNodeFetchesTheSameId) {
  testing::InMemoryStore store(2);
  SpanRendezvous root(Spanning(0), store), other(Spanning(1), store);
  EXPECT_TRUE(root.hosts_root());
  EXPECT_FALSE(other.hosts_root());
  auto g_root = root.NextGeneration(), g_other = other.NextGeneration();
  ASSERT_TRUE(g_root.ok() && g_other.ok());
  EXPECT_EQ(*g_root, 0);
  EXPECT_EQ(*g_other, 0);
  const std::string id(128, '\x5a');
  // The other node waits for the id the root publishes a little later.
  std::thread publisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_TRUE(root.Publish(0, id).ok());
  });
  auto fetched = other.Fetch(0, Clock::now() + std::chrono::seconds(5), {});
  publisher.join();
  ASSERT_TRUE(fetched.ok()) << fetched.status().ToString();
  EXPECT_EQ(*fetched, id);
}

TEST(SpanRendezvousTest, ADifferentConfigIsAFailedPreconditionNamingBothNodes) {
  testing::InMemoryStore store(2);
  SpanRendezvous root(Spanning(0, 64), store), other(Spanning(1, 128), store);
  ASSERT_TRUE(root.Publish(0, std::string(128, '\1')).ok());
  auto fetched = other.Fetch(0, Clock::now() + std::chrono::seconds(5), {});
  EXPECT_EQ(fetched.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(fetched.status().message(), HasSubstr("different configs"));
  EXPECT_THAT(fetched.status().message(), HasSubstr("node 0"));
  EXPECT_THAT(fetched.status().message(), HasSubstr("H=128"));
}

TEST(SpanRendezvousTest, AMissingRootIsUnavailableNamingItsNodeAtTheDeadline) {
  testing::InMemoryStore store(2);
  SpanRendezvous other(Spanning(1), store);
  const auto start = Clock::now();
  auto fetched = other.Fetch(0, start + std::chrono::milliseconds(100), {});
  EXPECT_EQ(fetched.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(fetched.status().message(), HasSubstr("node 0"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
}

TEST(SpanRendezvousTest, ABrokenGenerationMovesEveryMemberOnAndReleasesWaiters) {
  testing::InMemoryStore store(2);
  SpanRendezvous root(Spanning(0), store), other(Spanning(1), store);
  ASSERT_EQ(*other.NextGeneration(), 0);
  root.Break(0);  // e.g. the root's watchdog aborted generation 0
  // A member still waiting for generation 0's id gives up at once, not at its deadline.
  const auto start = Clock::now();
  auto fetched = other.Fetch(0, start + std::chrono::seconds(30), {});
  EXPECT_EQ(fetched.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(fetched.status().message(), HasSubstr("given up"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(*root.NextGeneration(), 1);
  EXPECT_EQ(*other.NextGeneration(), 1);
}

// A fresh rendezvous (the group created again on a node, or the node's daemon restarted)
// never joins a generation its node formed before: the peers' communicator of it names the
// node's earlier one, and its unique id in the store is stale.
TEST(SpanRendezvousTest, AFreshRendezvousSkipsTheGenerationItsNodeFormedBefore) {
  testing::InMemoryStore store(2);
  {
    SpanRendezvous before(Spanning(1), store);
    ASSERT_EQ(*before.NextGeneration(), 0);
    ASSERT_TRUE(before.MarkFormed(0).ok());
  }
  SpanRendezvous again(Spanning(1), store);
  EXPECT_EQ(*again.NextGeneration(), 1);
  // The peer, whether it noticed or made its group again itself, is raised to it too.
  SpanRendezvous peer(Spanning(0), store);
  EXPECT_EQ(*peer.NextGeneration(), 1);
  // A later formation of the same rendezvous keeps its generation until it breaks.
  ASSERT_TRUE(again.MarkFormed(1).ok());
  EXPECT_EQ(*again.NextGeneration(), 1);
  // A fresh rendezvous whose node never formed the stored generation joins it.
  testing::InMemoryStore fresh(2);
  SpanRendezvous early(Spanning(1), fresh);
  EXPECT_EQ(*early.NextGeneration(), 0);
}

// Destroyed on a node, a group's rendezvous raises the generation past the one it formed, and
// the leader drops that generation's keys; one that never formed leaves the store as it is.
// Destroyed on its last node, the group leaves nothing.
TEST(SpanRendezvousTest, RetiringDropsTheKeysOfTheGenerationItFormed) {
  testing::InMemoryStore store(2);
  testing::InMemoryStore node1 = store.Node(1);
  const std::string generation_key = "epd/nccl/" + Spanning(0).name + "/generation";
  SpanRendezvous root(Spanning(0), store);
  ASSERT_EQ(*root.NextGeneration(), 0);
  ASSERT_TRUE(root.Publish(0, std::string(128, '\2')).ok());
  {
    // Node 1's group, destroyed before it formed.
    SpanRendezvous idle(Spanning(1), node1);
    ASSERT_EQ(*idle.NextGeneration(), 0);
    const uint64_t published = store.View().store_keys;
    idle.Retire();
    EXPECT_EQ(store.View().store_keys, published);
    EXPECT_TRUE(node1.forgot(generation_key));
  }
  SpanRendezvous other(Spanning(1), node1);
  ASSERT_EQ(*other.NextGeneration(), 0);
  ASSERT_TRUE(root.MarkFormed(0).ok());
  ASSERT_TRUE(other.MarkFormed(0).ok());
  EXPECT_EQ(store.View().store_keys, 4u);  // the generation, the id, two formed marks
  other.Retire();
  EXPECT_EQ(store.View().store_keys, 1u);
  EXPECT_EQ(store.Get(generation_key).value(), "1");
  root.Retire();  // the last node: nothing is left
  EXPECT_EQ(store.View().store_keys, 0u);
}

TEST(SpanRendezvousTest, StoppingReleasesAWaitingFetch) {
  testing::InMemoryStore store(2);
  SpanRendezvous other(Spanning(1), store);
  const auto start = Clock::now();
  auto fetched = other.Fetch(0, start + std::chrono::seconds(30), [] { return true; });
  EXPECT_EQ(fetched.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(fetched.status().message(), HasSubstr("stopped"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace epd::cuda
