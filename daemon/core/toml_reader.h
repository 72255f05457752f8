// TomlReader: typed reads out of a parsed TOML tree (toml++) for the daemon's config file, every
// error naming the source, the line and the key path ("epd.toml:12: group[0].hidden must be an
// integer, not string"), and the key lists' checks. Used by daemon_config.cc and
// group_decls_toml.cc.
#pragma once

#include <toml++/toml.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace epd {

// A day: larger timeouts are typos.
inline constexpr int64_t kMaxTimeoutMs = 24LL * 3600 * 1000;

template <size_t N>
std::string JoinKeys(const std::string_view (&keys)[N]) {
  std::string out;
  for (auto key : keys) out += (out.empty() ? "" : ", ") + std::string(key);
  return out;
}

template <size_t N>
bool IsOneOf(const std::string_view (&keys)[N], std::string_view key) {
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

// "integer", "table", ...: what a TOML node holds, for error messages.
std::string_view TomlTypeName(const toml::node& node);

// Reads typed values out of the toml tree; every error names the source, line and key path.
class TomlReader {
 public:
  explicit TomlReader(std::string_view source) : source_(source) {}

  const std::string& source() const { return source_; }

  // "source:line: message" (toml++ records the line of every node).
  Status At(const toml::node& node, std::string_view message) const {
    const auto line = node.source().begin.line;
    if (line == 0) return InvalidArgumentError("{}: {}", source_, message);
    return InvalidArgumentError("{}:{}: {}", source_, line, message);
  }
  Status Error(const toml::node& node, std::string_view key, std::string_view problem) const {
    return At(node, fmt::format("{} {}", key, problem));
  }

  template <size_t N>
  Status CheckKeys(const toml::table& table, std::string_view prefix,
                   const std::string_view (&known)[N]) const {
    for (const auto& [key, node] : table) {
      if (!IsOneOf(known, key.str())) {
        return Error(node, fmt::format("{}{}", prefix, key.str()),
                     fmt::format("is not a known key (known: {})", JoinKeys(known)));
      }
    }
    return OkStatus();
  }

  StatusOr<std::string> String(const toml::node& node, std::string_view key) const {
    if (const auto* value = node.as_string()) return value->get();
    return Error(node, key, fmt::format("must be a string, not {}", TomlTypeName(node)));
  }

  StatusOr<int> Int(const toml::node& node, std::string_view key, int64_t min,
                    int64_t max = INT_MAX) const {
    const auto* value = node.as_integer();
    if (value == nullptr) {
      return Error(node, key, fmt::format("must be an integer, not {}", TomlTypeName(node)));
    }
    if (value->get() < min || value->get() > max) {
      return Error(node, key, fmt::format("= {} is outside [{}, {}]", value->get(), min, max));
    }
    return static_cast<int>(value->get());
  }

  StatusOr<std::chrono::milliseconds> Millis(const toml::node& node, std::string_view key,
                                             int64_t min) const {
    const auto* value = node.as_integer();
    if (value == nullptr) {
      return Error(node, key, fmt::format("must be an integer, not {}", TomlTypeName(node)));
    }
    if (value->get() < min || value->get() > kMaxTimeoutMs) {
      return Error(node, key,
                   fmt::format("= {} is outside [{}, {}] ms", value->get(), min, kMaxTimeoutMs));
    }
    return std::chrono::milliseconds(value->get());
  }

  StatusOr<std::vector<int>> IntArray(const toml::node& node, std::string_view key, int64_t min,
                                      int64_t max = INT_MAX) const {
    const auto* array = node.as_array();
    if (array == nullptr) {
      return Error(node, key,
                   fmt::format("must be an array of integers, not {}", TomlTypeName(node)));
    }
    std::vector<int> out;
    for (size_t i = 0; i < array->size(); ++i) {
      EPD_ASSIGN_OR_RETURN(int value, Int((*array)[i], fmt::format("{}[{}]", key, i), min, max));
      out.push_back(value);
    }
    return out;
  }

  // Applies a dtype/layout/algorithm parser and keeps the key in its error.
  template <typename T, typename Parse>
  StatusOr<T> Enum(const toml::node& node, std::string_view key, Parse parse) const {
    EPD_ASSIGN_OR_RETURN(std::string text, String(node, key));
    auto parsed = parse(text);
    if (!parsed.ok())
      return Error(node, key, fmt::format("= \"{}\": {}", text, parsed.status().message()));
    return *parsed;
  }

 private:
  std::string source_;
};

}  // namespace epd
