#include "daemon/core/daemon_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

namespace epd {
namespace {

using ::testing::HasSubstr;

// Parses `text` expecting INVALID_ARGUMENT whose message contains every `needles`.
void ExpectError(const std::string& text, std::initializer_list<std::string> needles) {
  auto config = ParseDaemonConfig(text, "test.toml");
  ASSERT_FALSE(config.ok()) << "parsed:\n" << text;
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  for (const auto& needle : needles) {
    EXPECT_THAT(config.status().message(), HasSubstr(needle)) << "config:\n" << text;
  }
}

TEST(DaemonConfigTest, EmptyFileGivesDefaults) {
  auto config = ParseDaemonConfig("", "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->listen, "unix:///run/epd/epd.sock");
  EXPECT_TRUE(config->tcp_listen.empty());
  EXPECT_EQ(config->backend, BackendKind::kAuto);
  EXPECT_EQ(config->cpu_ranks, 1);
  EXPECT_TRUE(config->gpus.empty());
  EXPECT_EQ(config->log_level, "info");
  EXPECT_TRUE(config->groups.empty());
}

TEST(DaemonConfigTest, ParsesEveryKey) {
  auto config = ParseDaemonConfig(R"(
listen = "unix:///tmp/x/epd.sock"
tcp_listen = "[::1]:50051"
backend = "cpu"
cpu_ranks = 4
gpus = [0, 2]
log_level = "debug"
op_timeout_ms = 250
session_idle_timeout_ms = 1000
drain_timeout_ms = 0

[[group]]
name = "moe"
world_size = 4
experts = 16
hidden = 128
max_tokens_per_rank = 32
top_k = 2
dtype = "fp16"
layout = "rank_major"
algorithm = "low_latency"
expert_capacity = 64

  [[group.handle]]
  name = "layer0"

  [[group.handle]]
  name = "layer1"
  ranks = [1, 3]

[[group]]
name = "pair"
ranks = [2, 3]
experts = 4
hidden = 64
max_tokens_per_rank = 8
top_k = 1
)",
                                  "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->listen, "unix:///tmp/x/epd.sock");
  EXPECT_EQ(config->tcp_listen, "[::1]:50051");
  EXPECT_EQ(config->backend, BackendKind::kCpu);
  EXPECT_EQ(config->cpu_ranks, 4);
  EXPECT_EQ(config->gpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->op_timeout.count(), 250);
  EXPECT_EQ(config->session_idle_timeout.count(), 1000);
  EXPECT_EQ(config->drain_timeout.count(), 0);
  ASSERT_EQ(config->groups.size(), 2u);

  const auto& moe = config->groups[0];
  EXPECT_EQ(moe.config.name, "moe");
  EXPECT_EQ(moe.config.ranks, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(moe.config.experts, 16);
  EXPECT_EQ(moe.config.hidden, 128);
  EXPECT_EQ(moe.config.max_tokens_per_rank, 32);
  EXPECT_EQ(moe.config.top_k, 2);
  EXPECT_EQ(moe.config.dtype, DType::kFp16);
  EXPECT_EQ(moe.config.layout, Layout::kRankMajor);
  EXPECT_EQ(moe.config.algorithm, Algorithm::kLowLatency);
  EXPECT_EQ(moe.config.expert_capacity, 64);
  ASSERT_EQ(moe.handles.size(), 2u);
  EXPECT_EQ(moe.handles[0].name, "layer0");
  EXPECT_EQ(moe.handles[0].ranks, (std::vector<int>{0, 1, 2, 3}));  // default: all members
  EXPECT_EQ(moe.handles[1].ranks, (std::vector<int>{1, 3}));

  const auto& pair = config->groups[1];
  EXPECT_EQ(pair.config.ranks, (std::vector<int>{2, 3}));
  EXPECT_EQ(pair.config.dtype, DType::kBf16);  // defaults
  EXPECT_EQ(pair.config.layout, Layout::kExpertMajor);
  EXPECT_EQ(pair.config.algorithm, Algorithm::kLowLatency);
  EXPECT_TRUE(pair.handles.empty());
}

TEST(DaemonConfigTest, SyntaxErrorNamesLine) {
  ExpectError("listen = \"unix:///a\"\ncpu_ranks = = 3\n", {"test.toml:2"});
}

TEST(DaemonConfigTest, UnknownKeysAreErrors) {
  ExpectError("listne = \"unix:///a\"\n", {"test.toml:1", "listne", "not a known key"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 1
experts = 2
hidden = 8
max_tokens_per_rank = 4
top_k = 1
topk = 2
)",
              {"test.toml:9", "group[0].topk"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 1
experts = 2
hidden = 8
max_tokens_per_rank = 4
top_k = 1
  [[group.handle]]
  name = "h"
  rank = 0
)",
              {"group[0].handle[0].rank", "not a known key"});
}

TEST(DaemonConfigTest, WrongTypesNameTheKey) {
  ExpectError("cpu_ranks = \"4\"\n", {"test.toml:1", "cpu_ranks", "integer", "string"});
  ExpectError("listen = 5\n", {"listen", "string"});
  ExpectError("gpus = [0, \"1\"]\n", {"gpus[1]", "integer"});
  ExpectError("gpus = 0\n", {"gpus", "array"});
  ExpectError("op_timeout_ms = 1.5\n", {"op_timeout_ms", "float"});
  ExpectError("group = 3\n", {"group", "array of tables"});
}

TEST(DaemonConfigTest, ContradictoryValuesNameTheKey) {
  ExpectError("tcp_listen = \"0.0.0.0:50051\"\n", {"test.toml:1", "tcp_listen", "loopback"});
  ExpectError("tcp_listen = \"localhost:50051\"\n", {"tcp_listen", "loopback"});
  ExpectError("tcp_listen = \"127.0.0.1\"\n", {"tcp_listen"});
  ExpectError("cpu_ranks = 0\n", {"cpu_ranks", "0"});
  ExpectError("backend = \"tpu\"\n", {"backend", "tpu"});
  ExpectError("log_level = \"loud\"\n", {"test.toml:1", "log_level", "loud"});
  ExpectError("listen = \"127.0.0.1:5000\"\n", {"listen", "unix"});
  ExpectError("gpus = [1, 1]\n", {"gpus", "twice"});
  ExpectError("op_timeout_ms = 0\n", {"op_timeout_ms"});
}

const char* kGroup = R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)";

TEST(DaemonConfigTest, GroupErrors) {
  ExpectError(std::string(kGroup) + kGroup, {"group[1].name", "duplicates group[0]"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 4
experts = 6
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)",
              {"test.toml:2", "group[0]", "experts=6", "multiple"});
  // A high-throughput knob on a low-latency group is refused by name, not ignored.
  ExpectError(R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
recv_capacity = 6
)",
              {"test.toml:2", "group[0]", "recv_capacity=6", "high_throughput only"});
  ExpectError(R"(
[[group]]
name = "g"
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)",
              {"group[0].ranks", "world_size", "required"});
  ExpectError(R"(
[[group]]
name = "g"
ranks = [0, 1]
world_size = 3
experts = 6
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)",
              {"group[0].world_size", "contradicts"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 2147483647
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)",
              {"test.toml:4", "group[0].world_size", "at most 4096 ranks"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 2
hidden = 8
max_tokens_per_rank = 4
top_k = 1
)",
              {"group[0].experts", "required"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
dtype = "int32"
)",
              {"group[0]", "dtype"});
  ExpectError(R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 8
max_tokens_per_rank = 4
top_k = 1
layout = "sideways"
)",
              {"test.toml:9", "group[0].layout", "sideways"});
}

TEST(DaemonConfigTest, HandleErrors) {
  ExpectError(std::string(kGroup) + "  [[group.handle]]\n  ranks = [0]\n",
              {"group[0].handle[0].name", "required"});
  ExpectError(std::string(kGroup) + "  [[group.handle]]\n  name = \"h\"\n  ranks = [5]\n",
              {"group[0].handle[0].ranks", "rank 5", "not a member"});
  ExpectError(std::string(kGroup) +
                  "  [[group.handle]]\n  name = \"h\"\n  [[group.handle]]\n  name = \"h\"\n"
                  "  ranks = [1]\n",
              {"group[0].handle[1].name", "rank 1", "duplicates group[0].handle[0]"});
}

TEST(DaemonConfigTest, GroupsCheckedAgainstNodeRanks) {
  auto config = ParseDaemonConfig(kGroup, "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(CheckGroupsAgainstNode(*config, 2).ok());
  Status too_few = CheckGroupsAgainstNode(*config, 1);
  EXPECT_EQ(too_few.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(too_few.message(), HasSubstr("group[0]"));
  EXPECT_THAT(too_few.message(), HasSubstr("rank 1"));
  EXPECT_THAT(too_few.message(), HasSubstr("world_size name 2 ranks"));
}

TEST(DaemonConfigTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:0"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1:"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1:70000"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.10:1"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:1"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:1"));
}

TEST(DaemonConfigTest, ShippedExampleConfigIsValid) {
  // The shipped file starts on any node: no persistent groups, metrics on loopback.
  auto config = LoadDaemonConfig(EPD_EXAMPLE_CONFIG);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->groups.empty());
  EXPECT_TRUE(CheckGroupsAgainstNode(*config, 1).ok());
  EXPECT_EQ(config->metrics_listen, "127.0.0.1:9464");

  // Its commented-out example group, uncommented, is valid for an 8-GPU node.
  std::ifstream in(EPD_EXAMPLE_CONFIG);
  std::string text, line;
  bool in_example = false;
  while (std::getline(in, line)) {
    if (line == "# [[group]]") in_example = true;
    if (in_example && line.rfind("# ", 0) == 0) line = line.substr(2);
    text += line + "\n";
  }
  ASSERT_TRUE(in_example) << "the example [[group]] is missing from " << EPD_EXAMPLE_CONFIG;
  auto example = ParseDaemonConfig(text, "uncommented example");
  ASSERT_TRUE(example.ok()) << example.status().ToString();
  ASSERT_EQ(example->groups.size(), 1u);
  EXPECT_EQ(example->groups[0].config.world_size(), 8);
  EXPECT_EQ(example->groups[0].handles.size(), 2u);
  EXPECT_FALSE(example->groups[0].config.fp8_dispatch());  // dispatch_dtype = "bf16"
  EXPECT_EQ(example->groups[0].config.scale_format, ScaleFormat::kFp32);
  EXPECT_TRUE(CheckGroupsAgainstNode(*example, 8).ok());
  // And its commented-out [cluster] table.
  EXPECT_EQ(example->cluster.nodes, 2);
  EXPECT_TRUE(ValidateClusterSettings(example->cluster).ok());
}

TEST(DaemonConfigTest, MetricsGroupRetentionIsMillisecondsFromZero) {
  EXPECT_EQ(ParseDaemonConfig("")->metrics_group_retention, std::chrono::minutes(5));
  EXPECT_EQ(ParseDaemonConfig("metrics_group_retention_ms = 0")->metrics_group_retention.count(),
            0);
  EXPECT_EQ(ParseDaemonConfig("metrics_group_retention_ms = 60000")->metrics_group_retention,
            std::chrono::minutes(1));
  for (const char* bad : {"-1", "\"5m\"", "1.5"}) {
    auto config = ParseDaemonConfig(fmt::format("metrics_group_retention_ms = {}", bad));
    ASSERT_FALSE(config.ok()) << bad;
    EXPECT_THAT(config.status().message(), HasSubstr("metrics_group_retention_ms")) << bad;
  }
}

TEST(DaemonConfigTest, MetricsListenIsIpAndPortOrEmpty) {
  EXPECT_TRUE(ParseDaemonConfig("metrics_listen = \"\"").ok());
  EXPECT_TRUE(ParseDaemonConfig("metrics_listen = \"0.0.0.0:9464\"").ok());
  EXPECT_TRUE(ParseDaemonConfig("metrics_listen = \"[::1]:9464\"").ok());
  for (const char* bad : {"localhost:9464", "127.0.0.1", "127.0.0.1:99999", "1.2.3:80"}) {
    auto config = ParseDaemonConfig(fmt::format("metrics_listen = \"{}\"", bad));
    ASSERT_FALSE(config.ok()) << bad;
    EXPECT_THAT(config.status().message(), HasSubstr("metrics_listen")) << bad;
    EXPECT_THAT(config.status().message(), HasSubstr(bad));
  }
}

TEST(DaemonConfigTest, UnixListenNeedsAbsolutePathAfterTwoSlashes) {
  auto config = ParseDaemonConfig("listen = \"unix://relative.sock\"");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("absolute path"));
  EXPECT_TRUE(ParseDaemonConfig("listen = \"unix:relative.sock\"").ok());
}

TEST(DaemonConfigTest, Fp8DispatchKeys) {
  const std::string group = R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 256
max_tokens_per_rank = 4
top_k = 1
)";
  auto config = ParseDaemonConfig(
      group + "dispatch_dtype = \"fp8_e4m3\"\nscale_format = \"ue8m0\"\n", "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->groups[0].config.fp8_dispatch());
  EXPECT_EQ(config->groups[0].config.scale_format, ScaleFormat::kUe8m0);
  ExpectError(group + "dispatch_dtype = \"fp16\"\n",
              {"group[0].dispatch_dtype", "fp16", "expected the token dtype \"bf16\""});
  ExpectError(group + "scale_format = \"e8m0\"\n", {"group[0].scale_format", "e8m0"});
  ExpectError(group + "dtype = \"fp16\"\ndispatch_dtype = \"fp8_e4m3\"\n",
              {"group[0]", "quantizes bf16 tokens, but dtype=fp16"});
}

TEST(DaemonConfigTest, HighThroughputKeys) {
  const std::string group = R"(
[[group]]
name = "g"
world_size = 2
experts = 4
hidden = 8
top_k = 1
)";
  auto config = ParseDaemonConfig(group +
                                      "max_tokens_per_rank = 8\nalgorithm = \"high_throughput\"\n"
                                      "recv_capacity = 12\nsm_budget = 4\n",
                                  "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const GroupConfig& ht = config->groups[0].config;
  EXPECT_EQ(ht.algorithm, Algorithm::kHighThroughput);
  EXPECT_EQ(ht.recv_row_capacity(), 12);
  EXPECT_EQ(ht.effective_sm_budget(), 4);
  // auto: the token rule, resolved while parsing.
  config = ParseDaemonConfig(group + "max_tokens_per_rank = 1024\nalgorithm = \"auto\"\n",
                             "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->groups[0].config.algorithm, Algorithm::kHighThroughput);
  config = ParseDaemonConfig(group + "max_tokens_per_rank = 8\nalgorithm = \"auto\"\n",
                             "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->groups[0].config.algorithm, Algorithm::kLowLatency);
  ExpectError(group + "max_tokens_per_rank = 8\nalgorithm = \"high_throughput\"\nsm_budget = -1\n",
              {"group[0].sm_budget"});
}

TEST(DaemonConfigTest, MissingFileIsNotFound) {
  auto config = LoadDaemonConfig("/nonexistent/epd.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/epd.toml"));
}

TEST(DaemonConfigTest, LimitsHaveDefaultsAndEveryKeyIsChecked) {
  auto defaults = ParseDaemonConfig("");
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->limits.fences, SessionLimits{}.fences);
  auto config = ParseDaemonConfig(
      "[limits]\nbuffers_per_session = 3\nmapped_bytes_per_session = 4096\n"
      "fences_per_session = 5\nhandles_per_session = 6\ngroups_per_session = 7\n"
      "persistent_groups = 8\nsessions = 9\n");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->limits.buffers, 3u);
  EXPECT_EQ(config->limits.mapped_bytes, 4096u);
  EXPECT_EQ(config->limits.fences, 5u);
  EXPECT_EQ(config->limits.handles, 6u);
  EXPECT_EQ(config->limits.groups, 7u);
  EXPECT_EQ(config->limits.persistent_groups, 8u);
  EXPECT_EQ(config->limits.sessions, 9u);
  ExpectError("[limits]\nfences_per_session = 0\n", {"limits.fences_per_session"});
  ExpectError("[limits]\nfences = 1\n", {"limits.fences is not a known key"});
  ExpectError("limits = 3\n", {"limits must be a table"});
}

}  // namespace
}  // namespace epd
