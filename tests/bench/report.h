// epd-bench output: the JSON document (--json FILE) and the markdown table on stdout.
//
// JSON schema "epd-bench/1" (the torch baseline writes the same `results` entries):
//   { "schema": "epd-bench/1", "date": ISO-8601 UTC, "host": ..., "backend": "cpu"|"cuda",
//     "ranks": R, "nodes": N, "devices": [names], "nccl_version": ...,
//     "settings": { "warmup": W, "iterations": N, "seed": S },
//     "control": { "<name>": { "iterations", "median_us", "p99_us", ... } },
//     "results": [ { "case": { "hidden", "top_k", "experts", "max_tokens", "tokens", "dtype",
//                              "layout", "algorithm", "routing", "seed", "ranks" },
//                    "mode", "timing", "handle_bytes", "selections_per_rank",
//                    "ops": { "update"|"dispatch"|"combine": { "iterations", "median_us",
//                             "p99_us", "mean_us", "min_us", "max_us", "gbps" } },
//                    "check", "error" } ] }
#pragma once

#include <map>
#include <string>
#include <vector>

#include "tests/bench/bench_case.h"

namespace epd::bench {

struct RunInfo {
  std::string date;
  std::string host;
  std::string backend;
  int ranks = 0;
  int nodes = 1;  // daemons the ranks are spread over (one deployment)
  std::vector<std::string> devices;
  std::string nccl_version;
  int warmup = 0;
  int iterations = 0;
  uint64_t seed = 0;
};

std::string JsonEscape(const std::string& text);
std::string ToJson(const RunInfo& info, const std::map<std::string, OpSummary>& control,
                   const std::vector<Result>& results);
std::string ToMarkdown(const RunInfo& info, const std::map<std::string, OpSummary>& control,
                       const std::vector<Result>& results);

}  // namespace epd::bench
