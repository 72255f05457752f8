#include "tests/integration/fuzz_support.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

namespace epd::testing {

int FuzzScale() {
  const char* scale = std::getenv("EPD_FUZZ_SCALE");
  return scale != nullptr && std::atoi(scale) > 1 ? std::atoi(scale) : 1;
}

bool IsCanonicalError(StatusCode code) {
  switch (code) {
    case StatusCode::kInternal:
    case StatusCode::kUnknown:
    case StatusCode::kUnimplemented:
    case StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

std::string CodeSummary(const std::map<StatusCode, int>& codes) {
  std::string summary;
  for (const auto& [code, count] : codes) {
    summary += fmt::format(" {} {}", StatusCodeName(code), count);
  }
  return summary;
}

void FuzzDaemonTest::SetUp() {
  const char* backend = std::getenv("EPD_FUZZ_BACKEND");
  const bool cuda = backend != nullptr && std::string_view(backend) == "cuda";
  std::vector<std::string> args = {"--op-timeout-ms", std::to_string(kFuzzOpTimeoutMs)};
  if (cuda) args.insert(args.end(), {"--backend", "cuda"});
  auto daemon = DaemonProcess::Start(args, 2);
  if (cuda && !daemon.ok() && daemon.status().message().find("no CUDA GPU") != std::string::npos) {
    GTEST_SKIP() << "EPD_FUZZ_BACKEND=cuda needs a GPU: " << daemon.status().message();
  }
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  daemon_ = std::move(daemon).value();
  auto client = ConnectOrDie(daemon_->address());
  auto info = client->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ranks_ = cuda ? std::min(info->gpus_size(), 2) : 2;
  problem_ = SmallProblem(ranks_);
}

StatusOr<std::vector<RankClient>> FuzzDaemonTest::MakeWorld(const std::string& group,
                                                            const example::Problem& problem) {
  example::RankRunnerOptions options;
  options.group = group;
  return MakeRanks(daemon_->address(), problem, options);
}

}  // namespace epd::testing
