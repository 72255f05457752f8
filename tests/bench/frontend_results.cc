// ReadFrontendResults: the coordinator's side of the frontends' result files.
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "tests/bench/frontend.h"

namespace epd::bench {

StatusOr<FrontendResults> ReadFrontendResults(const std::vector<std::string>& paths,
                                              const std::vector<Case>& cases, int ranks) {
  FrontendResults merged;
  // [case][mode] -> samples per op per rank, plus check / error texts.
  struct Entry {
    ModeSamples samples;
    std::vector<std::string> checks;
    std::string error;
    std::vector<double> wire;  // bytes each reporting rank sent per layer (spanning groups)
    bool seen = false;
  };
  std::map<std::pair<int, std::string>, Entry> entries;
  std::map<int, uint64_t> held;  // by case: the largest handle any rank's daemon reported
  std::string fatal;
  for (size_t rank = 0; rank < paths.size(); ++rank) {
    std::ifstream in(paths[rank]);
    if (!in) return NotFoundError("frontend {} wrote no result file {}", rank, paths[rank]);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string kind;
      words >> kind;
      auto rest = [&words] {
        std::string text;
        std::getline(words, text);
        return text.empty() ? text : text.substr(1);
      };
      if (kind == "node") {
        words >> merged.backend >> merged.nccl_version;
        if (merged.nccl_version == "-") merged.nccl_version.clear();
      } else if (kind == "device") {
        merged.devices.push_back(rest());
      } else if (kind == "fatal" || kind == "control_error") {
        if (fatal.empty()) fatal = fmt::format("frontend {}: {}", rank, rest());
      } else if (kind == "control") {
        std::string name;
        words >> name;
        std::vector<double> values;
        for (double v; words >> v;) values.push_back(v);
        merged.control[name] = Summarize({values}, 0.0);
      } else if (kind == "held") {  // what the daemon holds for the rank's handle
        int index = 0;
        uint64_t bytes = 0;
        words >> index >> bytes;
        held[index] = std::max(held[index], bytes);
      } else if (kind == "samples" || kind == "check" || kind == "error" || kind == "wire") {
        int index = 0;
        std::string mode;
        words >> index >> mode;
        Entry& entry = entries[{index, mode}];
        entry.seen = true;
        if (kind == "samples") {
          std::string op;
          words >> op;
          for (int o = 0; o < kNumOps; ++o) {
            if (op != OpName(static_cast<Op>(o))) continue;
            auto& per_rank = entry.samples.per_rank[o];
            per_rank.resize(ranks);
            for (double v; words >> v;) per_rank[rank].push_back(v);
          }
        } else if (kind == "check") {
          entry.checks.push_back(fmt::format("rank {}: {}", rank, rest()));
        } else if (kind == "wire") {
          double bytes = 0;
          if (words >> bytes) entry.wire.push_back(bytes);
        } else if (entry.error.empty()) {
          entry.error = fmt::format("rank {}: {}", rank, rest());
        }
      }
    }
  }
  for (const Case& c : cases) {
    for (const char* mode : {kModeFenced, kModeBlocking, kModeFrontendLaunched}) {
      auto it = entries.find({c.index, mode});
      if (it == entries.end()) continue;
      Entry& entry = it->second;
      Result result;
      result.bench_case = c;
      result.mode = mode;
      const bool gpu = merged.backend == "cuda";
      result.timing = mode != std::string(kModeBlocking) && gpu ? "gpu_events" : "host_clock";
      // The daemon's own count (exchange buffers of spanning groups included), else the layout.
      result.handle_bytes = held.count(c.index) != 0
                                ? held[c.index]
                                : ComputeHandleLayout(c.Config("x")).total_bytes();
      double selections = 0;
      MovedBytes moved;
      for (int r = 0; r < ranks; ++r) {
        const RankRouting routing = MakeRouting(c.routing, r, c.tokens, c.top_k, c.experts);
        selections += routing.valid_selections;
        const MovedBytes rank_moved = BytesMoved(c, routing);
        moved.dispatch += rank_moved.dispatch / ranks;
        moved.combine += rank_moved.combine / ranks;
      }
      result.selections_per_rank = selections / ranks;
      for (double bytes : entry.wire) result.wire_bytes += bytes / entry.wire.size();
      result.error = entry.error;
      if (result.error.empty()) {
        const double bytes = LogicalBytes(c, result.selections_per_rank);
        for (int o = 0; o < kNumOps; ++o) {
          OpSummary& summary = result.ops[OpName(static_cast<Op>(o))];
          summary = Summarize(entry.samples.per_rank[o], o == 0 ? 0.0 : bytes);
          if (o == static_cast<int>(Op::kDispatch)) summary.moved_bytes = moved.dispatch;
          if (o == static_cast<int>(Op::kCombine)) summary.moved_bytes = moved.combine;
        }
        if (mode != std::string(kModeBlocking)) {
          result.check = "passed";
          if (static_cast<int>(entry.checks.size()) < ranks) result.check = "skipped";
          for (const std::string& check : entry.checks) {
            if (check.find(": passed") == std::string::npos) result.check = check;
          }
        }
      }
      merged.results.push_back(std::move(result));
    }
  }
  if (merged.results.empty() && !fatal.empty()) return UnavailableError("{}", fatal);
  if (!fatal.empty()) {
    // Cases after the fatal point have no entries; say why in the first missing one.
    for (Result& r : merged.results) {
      if (r.error.empty() && r.ops.empty()) r.error = fatal;
    }
  }
  return merged;
}

}  // namespace epd::bench
