// GlooRankLink in one process: links of a group spanning three "nodes" (one rank each) meet
// through an in-memory store, exchange per-peer messages, refuse differing configs, re-form
// after a peer's mesh is gone, and stop at once when cancelled.
#include "daemon/backends/cpu/gloo_rank_link.h"

#include <gloo/transport/tcp/device.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <string>
#include <thread>

#include "daemon/cluster/membership.h"
#include "tests/unit/in_memory_store.h"

namespace epd {
namespace {

using ::testing::HasSubstr;

using epd::testing::InMemoryStore;

constexpr int kWorld = 3;
constexpr std::chrono::milliseconds kTimeout{5'000};

GroupConfig ConfigOfNode(int node, int hidden = 64) {
  GroupConfig c;
  c.name = "links";
  c.ranks = {0, 1, 2};
  c.experts = 6;
  c.hidden = hidden;
  c.max_tokens_per_rank = 4;
  c.top_k = 2;
  c.spans_nodes = true;
  c.span = GroupConfig::Span{node, kWorld, 1};
  return c;
}

std::shared_ptr<gloo::transport::Device> Device() {
  // gloo writes to sockets whose peer may be gone; like the daemon, take EPIPE, not SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  return gloo::transport::tcp::CreateDevice(attr);
}

// Every rank sends "r->p" padded to r + p + 1 bytes to every p; checks what it received.
Status ExchangeOnce(GlooRankLink& link, int r) {
  std::vector<std::string> out(kWorld), in(kWorld);
  std::vector<std::span<const char>> send;
  std::vector<std::span<char>> recv;
  for (int p = 0; p < kWorld; ++p) {
    out[p] = fmt::format("{}->{}", r, p);
    out[p].resize(r + p + 4, '.');
    in[p].assign(p + r + 4, '?');
  }
  for (int p = 0; p < kWorld; ++p) {
    send.emplace_back(out[p].data(), out[p].size());
    recv.emplace_back(in[p].data(), in[p].size());
  }
  EPD_RETURN_IF_ERROR(link.Exchange(send, recv, kTimeout, "test exchange"));
  for (int p = 0; p < kWorld; ++p) {
    std::string expected = fmt::format("{}->{}", p, r);
    expected.resize(p + r + 4, '.');
    if (in[p] != expected) return InternalError("rank {} got '{}' from {}", r, in[p], p);
  }
  return OkStatus();
}

std::vector<Status> OnEveryRank(const std::function<Status(int)>& fn) {
  std::vector<Status> statuses(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) threads.emplace_back([&, r] { statuses[r] = fn(r); });
  for (auto& thread : threads) thread.join();
  return statuses;
}

TEST(GlooRankLinkTest, ExchangesPerPeerMessagesAndReformsAfterAPeerIsReplaced) {
  InMemoryStore store(kWorld);
  auto device = Device();
  std::vector<std::unique_ptr<GlooRankLink>> links;
  for (int r = 0; r < kWorld; ++r) {
    links.push_back(std::make_unique<GlooRankLink>(ConfigOfNode(r), r, store, device));
  }
  for (int round = 0; round < 2; ++round) {
    for (const Status& s : OnEveryRank([&](int r) { return ExchangeOnce(*links[r], r); })) {
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
  }
  // Node 2 restarts (or makes its group again): its link is replaced; the others fail once
  // naming node 2, then all re-form a fresh mesh together.
  links[2] = std::make_unique<GlooRankLink>(ConfigOfNode(2), 2, store, device);
  const auto failed = OnEveryRank([&](int r) {
    return r == 2 ? OkStatus() : ExchangeOnce(*links[r], r);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(failed[r].code(), StatusCode::kUnavailable) << failed[r].ToString();
    EXPECT_THAT(failed[r].message(), HasSubstr("on node 2"));
  }
  EXPECT_GE(store.failures(2), 1);
  for (const Status& s : OnEveryRank([&](int r) { return ExchangeOnce(*links[r], r); })) {
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
}

TEST(GlooRankLinkTest, DifferentConfigsOnTwoNodesFailEveryRank) {
  InMemoryStore store(kWorld);
  auto device = Device();
  std::vector<std::unique_ptr<GlooRankLink>> links;
  for (int r = 0; r < kWorld; ++r) {
    links.push_back(
        std::make_unique<GlooRankLink>(ConfigOfNode(r, r == 1 ? 128 : 64), r, store, device));
  }
  for (const Status& s : OnEveryRank([&](int r) { return ExchangeOnce(*links[r], r); })) {
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("different configs"));
  }
}

// A group destroyed on a node drops its last mesh's keys from the leader's store, keeping the
// generation integer while another node still has the group; destroyed on every node, it
// leaves nothing. Links that went with a shutdown (a permanent cancel first) leave the keys to
// the next formation of the name, which starts past them.
TEST(GlooRankLinkTest, AGroupDestroyedOnEveryNodeLeavesNothingInTheStore) {
  InMemoryStore store(kWorld);
  std::vector<InMemoryStore> nodes;  // each rank's daemon, on the one store
  for (int r = 0; r < kWorld; ++r) nodes.push_back(store.Node(r));
  auto device = Device();
  const std::string generation_key = "epd/group/links/generation";
  std::vector<uint64_t> keys_by_destroy;
  auto form_and_end = [&](bool shutdown) {
    std::vector<std::unique_ptr<GlooRankLink>> links;
    for (int r = 0; r < kWorld; ++r) {
      links.push_back(std::make_unique<GlooRankLink>(ConfigOfNode(r), r, nodes[r], device));
    }
    for (const Status& s : OnEveryRank([&](int r) { return ExchangeOnce(*links[r], r); })) {
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
    for (auto& link : links) {
      if (shutdown) link->Cancel(UnavailableError("epd is shutting down"), true);
      std::vector<std::unique_ptr<GlooRankLink>> of_node;
      of_node.push_back(std::move(link));
      GlooRankLink::RetireAll(of_node);  // as the group's destruction on that node does
      keys_by_destroy.push_back(store.View().store_keys);
    }
  };
  form_and_end(/*shutdown=*/true);
  EXPECT_GT(keys_by_destroy.back(), 1u);
  EXPECT_EQ(store.Get(generation_key).value(), "0");
  EXPECT_FALSE(nodes[0].forgot(generation_key));
  keys_by_destroy.clear();
  form_and_end(/*shutdown=*/false);
  EXPECT_EQ(keys_by_destroy, (std::vector<uint64_t>{1, 1, 0}));
  EXPECT_FALSE(store.Get(generation_key).value().has_value());
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(nodes[r].forgot(generation_key)) << r;  // not carried to a restarted leader
  }
  // The name forms again from nothing.
  std::vector<std::unique_ptr<GlooRankLink>> again;
  for (int r = 0; r < kWorld; ++r) {
    again.push_back(std::make_unique<GlooRankLink>(ConfigOfNode(r), r, nodes[r], device));
  }
  for (const Status& s : OnEveryRank([&](int r) { return ExchangeOnce(*again[r], r); })) {
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(store.Get(generation_key).value(), "0");
}

TEST(GlooRankLinkTest, APermanentCancelEndsAWaitingFormationAtOnce) {
  InMemoryStore store(kWorld);
  GlooRankLink link(ConfigOfNode(0), 0, store, Device());
  Status result;
  const auto started = std::chrono::steady_clock::now();
  // The peers never come: without the cancel this waits for kTimeout.
  std::thread waiting([&] { result = ExchangeOnce(link, 0); });
  // Observable: the rank published its config and now waits for its peers'.
  for (int i = 0; i < 2000 && !store.Get("epd/group/links/g0/config/0").value().has_value(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(store.Get("epd/group/links/g0/config/0").value().has_value());
  link.Cancel(UnavailableError("epd is shutting down"), /*permanent=*/true);
  waiting.join();
  EXPECT_LT(std::chrono::steady_clock::now() - started, kTimeout / 2);
  EXPECT_EQ(result.code(), StatusCode::kUnavailable) << result.ToString();
}

}  // namespace
}  // namespace epd
