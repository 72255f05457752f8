// Prometheus /metrics on the real binary, scraped with curl after real layers: op counters by
// op/group/rank/code, latency buckets, payload bytes, sessions, handle bytes, timeouts, build
// info; a failed op is logged at warn; the exposition passes `promtool check metrics`.
// ListSessions reports the sessions that ran them.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <regex>
#include <string>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kRanks = 2;

// Runs `command` through the shell; its stdout, and its exit code in `*code`.
std::string RunCommand(const std::string& command, int* code) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *code = -1;
    return out;
  }
  std::array<char, 4096> buffer;
  size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out.append(buffer.data(), n);
  const int status = pclose(pipe);
  *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

bool HaveCommand(const std::string& name) {
  int code = 0;
  RunCommand("command -v " + name + " >/dev/null 2>&1", &code);
  return code == 0;
}

// The value of the sample whose line starts with `series` (name and labels, as exposed).
double Sample(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

// The /metrics URL of a daemon started with --metrics-listen 127.0.0.1:0 (from its log).
std::string MetricsUrlOf(DaemonProcess& daemon) {
  std::smatch match;
  const std::string log = daemon.ReadLog();
  if (!std::regex_search(log, match, std::regex(R"(/metrics \(port (\d+)\))"))) {
    ADD_FAILURE() << "no metrics port in the log: " << log;
    return "";
  }
  return "http://127.0.0.1:" + match[1].str() + "/metrics";
}

std::string Scrape(const std::string& url) {
  int code = 0;
  const std::string body = RunCommand("curl -sS --fail --max-time 5 " + url, &code);
  EXPECT_EQ(code, 0) << "curl " << url;
  return body;
}

// Layers [0, layers) on every rank of `world`, each checked.
Status RunLayers(std::vector<RankClient>& world, int layers) {
  for (int it = 0; it < layers; ++it) EPD_RETURN_IF_ERROR(RunGoodLayer(world, it));
  return OkStatus();
}

class MetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start(
        {"--metrics-listen", "127.0.0.1:0", "--op-timeout-ms", "300"}, kRanks);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    url_ = MetricsUrlOf(*daemon_);
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  static std::string Scrape() { return testing::Scrape(url_); }

  static std::unique_ptr<DaemonProcess> daemon_;
  static std::string url_;
};
std::unique_ptr<DaemonProcess> MetricsTest::daemon_;
std::string MetricsTest::url_;

TEST_F(MetricsTest, LayersShowUpAsCountersBucketsAndBytes) {
  ASSERT_TRUE(HaveCommand("curl")) << "curl is missing: run deploy/install-deps.sh";
  const example::Problem p = SmallProblem(kRanks);
  example::RankRunnerOptions options;
  options.group = "metrics";
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  constexpr int kLayers = 3;
  ASSERT_EPD_OK(RunLayers(*world, kLayers));

  // Rank 0 dispatches alone: its peer never posts, so the op times out (op_timeout 300 ms).
  const auto lonely = example::MakeInputs(p, 5, 0, 9, p.max_tokens, true);
  const Status timed_out = (*world)[0].runner->RunLayer(lonely, example::Identity, false);
  EXPECT_EQ(timed_out.code(), StatusCode::kDeadlineExceeded) << timed_out.ToString();

  const std::string text = Scrape();
  for (int rank = 0; rank < kRanks; ++rank) {
    const std::string labels = "group=\"metrics\",op=\"dispatch\",rank=\"" + std::to_string(rank);
    EXPECT_GE(Sample(text, "epd_ops_total{code=\"OK\"," + labels + "\"}"), kLayers) << text;
    EXPECT_GE(Sample(text, "epd_op_duration_seconds_count{" + labels + "\"}"), kLayers);
    EXPECT_GE(Sample(text, "epd_op_duration_seconds_bucket{" + labels + "\",le=\"+Inf\"}"),
              kLayers);
    EXPECT_GT(Sample(text, "epd_payload_bytes_total{" + labels + "\"}"), 0);
    EXPECT_GE(Sample(text, "epd_ops_total{code=\"OK\",group=\"metrics\",op=\"combine\",rank=\"" +
                               std::to_string(rank) + "\"}"),
              kLayers);
  }
  EXPECT_EQ(Sample(text, "epd_ops_total{code=\"DEADLINE_EXCEEDED\",group=\"metrics\","
                         "op=\"dispatch\",rank=\"0\"}"),
            1);
  EXPECT_EQ(Sample(text, "epd_op_timeouts_total{group=\"metrics\",op=\"dispatch\",rank=\"0\"}"), 1);
  // Some layer finished within 10 s, so a finite bucket counted it.
  EXPECT_GE(Sample(text, "epd_op_duration_seconds_bucket{group=\"metrics\",op=\"dispatch\","
                         "rank=\"0\",le=\"10\"}"),
            kLayers);
  EXPECT_EQ(Sample(text, "epd_sessions_open"), kRanks);
  EXPECT_GT(Sample(text, "epd_handle_bytes{gpu=\"\",rank=\"0\"}"), 0);
  EXPECT_GT(Sample(text, "epd_registered_buffers"), 0);
  EXPECT_GT(Sample(text, "epd_uptime_seconds"), 0);
  EXPECT_THAT(text, HasSubstr("epd_build_info{backend=\"cpu\""));

  // The failure is in the log at warn, naming op, group, rank and code.
  EXPECT_THAT(daemon_->ReadLog(),
              HasSubstr("warning [core] dispatch on group 'metrics' rank 0 (session "));
  EXPECT_THAT(daemon_->ReadLog(), HasSubstr("DEADLINE_EXCEEDED"));

  // ListSessions: both sessions with their ops; rank 0 has the failure.
  auto stub = v1::Epd::NewStub(
      grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListSessionsResponse sessions;
  ASSERT_TRUE(stub->ListSessions(&context, v1::ListSessionsRequest(), &sessions).ok());
  ASSERT_EQ(sessions.sessions_size(), kRanks);
  for (const auto& session : sessions.sessions()) {
    EXPECT_NE(session.session_id(), 0u);
    EXPECT_FALSE(session.unary());
    EXPECT_GE(session.ops_completed(), 3u * kLayers) << session.DebugString();
    EXPECT_EQ(session.ops_failed(), session.rank() == 0 ? 1u : 0u) << session.DebugString();
    EXPECT_GT(session.age_ms(), 0u);
  }
}

TEST_F(MetricsTest, ExpositionPassesPromtool) {
  if (!HaveCommand("promtool")) {
    GTEST_SKIP() << "promtool not installed (Debian package `prometheus`); the exposition format "
                    "is not linted";
  }
  ASSERT_TRUE(HaveCommand("curl")) << "curl is missing: run deploy/install-deps.sh";
  int code = 0;
  const std::string lint = RunCommand(
      "curl -sS --fail --max-time 5 " + url_ + " | promtool check metrics 2>&1", &code);
  EXPECT_EQ(code, 0) << lint;
}

// A destroyed group's op series stay for metrics_group_retention_ms, so scrapes see its last
// counts, then go, whether or not anything scrapes meanwhile: frontends that name groups per
// job do not grow /metrics, nor the daemon's memory, as long as it runs. A live group's stay.
TEST(MetricsRetentionTest, ADestroyedGroupsSeriesGoAfterTheRetention) {
  ASSERT_TRUE(HaveCommand("curl")) << "curl is missing: run deploy/install-deps.sh";
  constexpr auto kRetention = std::chrono::milliseconds(1'000);
  auto daemon =
      DaemonProcess::Start({"--metrics-listen", "127.0.0.1:0", "--metrics-group-retention-ms",
                            std::to_string(kRetention.count())},
                           kRanks);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  const std::string url = MetricsUrlOf(**daemon);
  auto world_of = [&](const std::string& group) {
    example::RankRunnerOptions options;
    options.group = group;
    return MakeRanks((*daemon)->address(), SmallProblem(kRanks), options);
  };
  auto dispatches = [](const std::string& group) {
    return fmt::format("epd_ops_total{{code=\"OK\",group=\"{}\",op=\"dispatch\",rank=\"0\"}}",
                       group);
  };
  auto kept = world_of("kept");
  auto ended = world_of("ended");
  auto unscraped = world_of("unscraped");
  ASSERT_TRUE(kept.ok() && ended.ok() && unscraped.ok());
  ASSERT_EPD_OK(RunLayers(*kept, 1));
  ASSERT_EPD_OK(RunLayers(*ended, 2));
  ASSERT_EPD_OK(RunLayers(*unscraped, 1));
  std::string text = Scrape(url);
  EXPECT_EQ(Sample(text, dispatches("ended")), 2);
  EXPECT_EQ(Sample(text, dispatches("unscraped")), 1);

  // Nothing scrapes after this group ends: its series go all the same (within the retention
  // and one pruning period, also the retention here).
  unscraped->clear();  // its sessions end, and the group with them
  std::this_thread::sleep_for(3 * kRetention);
  text = Scrape(url);
  EXPECT_EQ(text.find("group=\"unscraped\""), std::string::npos) << text;

  ended->clear();
  const auto destroyed = std::chrono::steady_clock::now();
  // Its last counts are there to scrape for the retention ...
  EXPECT_EQ(Sample(Scrape(url), dispatches("ended")), 2);
  // ... then they go.
  for (int i = 0; i < 100; ++i) {
    text = Scrape(url);
    if (text.find("group=\"ended\"") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(text.find("group=\"ended\""), std::string::npos) << text;
  EXPECT_GE(std::chrono::steady_clock::now() - destroyed, kRetention);
  EXPECT_EQ(Sample(text, dispatches("kept")), 1);
  EXPECT_GT(Sample(text, "epd_op_duration_seconds_count{group=\"kept\",op=\"combine\",rank=\"1\"}"),
            0);
}

}  // namespace
}  // namespace epd::testing
