// Randomised config files: the shipped deploy/epd.toml with its example group, handles and
// [cluster] table switched on, then one line changed (a value swapped for another type or an
// extreme, the line dropped, repeated or cut short, an unknown key or table added), checked
// with `epd --check-config`. Every file must end within the bound with exit 0 (valid) or 2
// (invalid, naming the file and the key or line) — never a crash, a hang or another code.
// Seeds are fixed; a failure prints the changed line and the daemon's output.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>

#include "tests/integration/daemon_process.h"

namespace epd::testing {
namespace {

constexpr int kExitUsage = 2;
constexpr int kConfigs = 400;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The shipped config with everything it documents switched on, for the cpu backend of
// `ranks` ranks, the cluster token in `token_file`.
std::string FullConfig(const std::string& token_file) {
  std::string out;
  for (std::string line : Lines(ReadFile(EPD_SHIPPED_CONFIG))) {
    // Uncomment the examples ("# key = v", "#   [[group.handle]]"), not the prose.
    static const std::regex example(R"(^#\s*(\[|[a-z_]+\s*=))");
    if (std::regex_search(line, example)) line = line.substr(line.find_first_not_of("# "));
    out += line + "\n";
  }
  out = std::regex_replace(out, std::regex(R"(backend = "auto")"), R"(backend = "cpu")");
  out = std::regex_replace(out, std::regex(R"(cpu_ranks = 1)"), "cpu_ranks = 8");
  out = std::regex_replace(out, std::regex(R"(token_file = "[^"]*")"),
                           "token_file = \"" + token_file + "\"");
  return out;
}

// A value of another type or at an edge, as TOML text.
std::string OddValue(std::mt19937_64& rng) {
  const std::vector<std::string> values = {"-1",
                                           "0",
                                           "1",
                                           "2147483648",
                                           "99999999999999999999999",
                                           "-9223372036854775808",
                                           "1.5",
                                           "nan",
                                           "inf",
                                           "true",
                                           "\"x\"",
                                           "\"\"",
                                           "\"" + std::string(5000, 'a') + "\"",
                                           "[1, 2]",
                                           "[]",
                                           "[\"a\"]",
                                           "{ a = 1 }",
                                           "1979-05-27T07:32:00Z",
                                           "'literal'",
                                           "\"unix:///\"",
                                           "\"127.0.0.1:99999\"",
                                           "[0, 0]",
                                           "[-1]",
                                           "\"fp8_e4m3\"",
                                           "\"high_throughput\""};
  return values[std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng)];
}

struct Change {
  std::string text;  // the whole file
  std::string what;  // the change, for a failure message
  std::string key;   // the key changed ("" when the change has none)
};

Change ChangeOneLine(const std::string& config, std::mt19937_64& rng) {
  std::vector<std::string> lines = Lines(config);
  std::vector<size_t> candidates;  // non-blank, non-comment lines
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto first = lines[i].find_first_not_of(' ');
    if (first != std::string::npos && lines[i][first] != '#') candidates.push_back(i);
  }
  const size_t at =
      candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng)];
  const std::string line = lines[at];
  const auto eq = line.find('=');
  std::string key;
  if (eq != std::string::npos) {
    key = line.substr(0, eq);
    key.erase(key.find_last_not_of(' ') + 1);
    key.erase(0, key.find_first_not_of(' '));
  }
  Change change;
  change.key = key;
  switch (std::uniform_int_distribution<int>(0, 5)(rng)) {
    case 0:
      lines.erase(lines.begin() + static_cast<long>(at));
      change.what = "dropped: " + line;
      break;
    case 1:
      lines.insert(lines.begin() + static_cast<long>(at), line);
      change.what = "repeated: " + line;
      break;
    case 2: {
      const size_t cut = std::uniform_int_distribution<size_t>(1, line.size())(rng);
      lines[at] = line.substr(0, cut - 1);
      change.what = "cut short: " + lines[at];
      break;
    }
    case 3:
      change.key =
          std::uniform_int_distribution<int>(0, 1)(rng) == 0 ? "unknown_key" : "unknown_table";
      lines.insert(lines.begin() + static_cast<long>(at) + 1,
                   change.key == "unknown_key" ? "unknown_key = 1" : "[unknown_table]");
      change.what = "after '" + line + "': " + lines[at + 1];
      break;
    default:
      if (eq == std::string::npos) {
        lines[at] = "[[grop]]";
        change.what = "table renamed: " + line + " -> [[grop]]";
        change.key = "grop";
      } else {
        lines[at] = key + " = " + OddValue(rng);
        change.what = "value: " + lines[at].substr(0, 120);
      }
      break;
  }
  for (const std::string& l : lines) change.text += l + "\n";
  return change;
}

class ConfigFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/epd-config-fuzz-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    token_file_ = dir_ + "/token";
    std::ofstream(token_file_) << "a-deployment-token-of-enough-length\n";
    std::filesystem::permissions(
        token_file_, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& text) {
    const std::string path = dir_ + "/epd.toml";
    std::ofstream(path) << text;
    return path;
  }
  std::string dir_, token_file_;
};

TEST_F(ConfigFuzzTest, EveryChangedFileIsValidOrNamedWithExit2) {
  const std::string full = FullConfig(token_file_);
  std::string output;
  // The base itself is valid: the changes below start from a file the daemon accepts.
  ASSERT_EQ(RunDaemonToExit({"--check-config", Write(full)}, &output), 0) << full << output;
  ASSERT_THAT(full, ::testing::HasSubstr("[[group.handle]]"));
  ASSERT_THAT(full, ::testing::HasSubstr("[cluster]"));

  std::mt19937_64 rng(20261202);
  int valid = 0, invalid = 0;
  std::vector<std::string> failures;
  for (int i = 0; i < kConfigs; ++i) {
    const Change change = ChangeOneLine(full, rng);
    const std::string path = Write(change.text);
    const int code = RunDaemonToExit({"--check-config", path}, &output);
    if (code == 0) {
      ++valid;
      continue;
    }
    ++invalid;
    if (code != kExitUsage) {
      failures.push_back(fmt::format("{} -> exit {}:\n{}", change.what, code, output));
    } else if (output.find("epd.toml") == std::string::npos) {
      failures.push_back(
          fmt::format("{} -> the error does not name the file:\n{}", change.what, output));
    } else if (!change.key.empty() && output.find(change.key) == std::string::npos &&
               !std::regex_search(output, std::regex(R"(epd\.toml:\d+)"))) {
      failures.push_back(fmt::format("{} -> the error names neither '{}' nor a line:\n{}",
                                     change.what, change.key, output));
    }
  }
  std::cout << "valid " << valid << ", invalid " << invalid << "\n";
  // Both outcomes occur: the changes reach the checks and do not all break the syntax.
  EXPECT_GE(valid, kConfigs / 10);
  EXPECT_GE(invalid, kConfigs / 3);
  for (size_t i = 0; i < failures.size() && i < 20; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

}  // namespace
}  // namespace epd::testing
