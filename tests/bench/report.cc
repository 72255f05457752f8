#include "tests/bench/report.h"

#include <fmt/format.h>

#include <cmath>

namespace epd::bench {
namespace {

std::string Number(double value) {
  if (!std::isfinite(value)) return "null";
  return fmt::format("{:.3f}", value);
}

std::string SummaryJson(const OpSummary& s) {
  return fmt::format(
      "{{\"iterations\": {}, \"median_us\": {}, \"p99_us\": {}, \"mean_us\": {}, \"min_us\": {}, "
      "\"max_us\": {}, \"gbps\": {}, \"moved_bytes\": {}}}",
      s.iterations, Number(s.median_us), Number(s.p99_us), Number(s.mean_us), Number(s.min_us),
      Number(s.max_us), Number(s.gbps), Number(s.moved_bytes));
}

std::string CaseJson(const Case& c) {
  return fmt::format(
      "{{\"ranks\": {}, \"hidden\": {}, \"top_k\": {}, \"experts\": {}, \"max_tokens\": {}, "
      "\"tokens\": {}, \"dtype\": \"{}\", \"layout\": \"{}\", \"algorithm\": \"{}\", "
      "\"routing\": \"{}\", \"seed\": {}, \"hot_experts\": {}, \"hot_percent\": {}, "
      "\"expert_capacity\": {}, \"dispatch_dtype\": \"{}\", \"scale_format\": \"{}\", "
      "\"prequantized\": {}}}",
      c.ranks, c.hidden, c.top_k, c.experts, c.max_tokens, c.tokens, DTypeName(c.dtype),
      LayoutName(c.layout), AlgorithmName(c.algorithm), RoutingName(c.routing.kind), c.routing.seed,
      c.routing.hot_experts, c.routing.hot_percent, c.expert_capacity,
      c.fp8() ? "fp8_e4m3" : DTypeName(c.dtype), ScaleFormatName(c.scale_format),
      c.prequantized ? "true" : "false");
}

std::string Cell(const std::map<std::string, OpSummary>& ops, const char* op, bool with_gbps) {
  auto it = ops.find(op);
  if (it == ops.end() || it->second.iterations == 0) return "-";
  const OpSummary& s = it->second;
  if (with_gbps && s.moved_bytes > 0) {
    return fmt::format("{:.1f} / {:.1f} ({:.1f}) [{:.4g} MB]", s.median_us, s.p99_us, s.gbps,
                       s.moved_bytes / 1e6);
  }
  if (with_gbps) return fmt::format("{:.1f} / {:.1f} ({:.1f})", s.median_us, s.p99_us, s.gbps);
  return fmt::format("{:.1f} / {:.1f}", s.median_us, s.p99_us);
}

}  // namespace

std::string JsonEscape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<int>(ch));
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string ToJson(const RunInfo& info, const std::map<std::string, OpSummary>& control,
                   const std::vector<Result>& results) {
  std::string out = "{\n";
  out += "  \"schema\": \"epd-bench/1\",\n";
  out += fmt::format("  \"date\": \"{}\",\n", JsonEscape(info.date));
  out += fmt::format("  \"host\": \"{}\",\n", JsonEscape(info.host));
  out += fmt::format("  \"backend\": \"{}\",\n", JsonEscape(info.backend));
  out += fmt::format("  \"ranks\": {},\n", info.ranks);
  out += fmt::format("  \"nodes\": {},\n", info.nodes);
  out += "  \"devices\": [";
  for (size_t i = 0; i < info.devices.size(); ++i) {
    out += fmt::format("{}\"{}\"", i ? ", " : "", JsonEscape(info.devices[i]));
  }
  out += "],\n";
  out += fmt::format("  \"nccl_version\": \"{}\",\n", JsonEscape(info.nccl_version));
  out += fmt::format("  \"settings\": {{\"warmup\": {}, \"iterations\": {}, \"seed\": {}}},\n",
                     info.warmup, info.iterations, info.seed);
  out += "  \"control\": {";
  bool first = true;
  for (const auto& [name, summary] : control) {
    out += fmt::format("{}\n    \"{}\": {}", first ? "" : ",", JsonEscape(name),
                       SummaryJson(summary));
    first = false;
  }
  out += control.empty() ? "},\n" : "\n  },\n";
  out += "  \"results\": [";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    out += i ? ",\n    {" : "\n    {";
    out += fmt::format(
        "\"case\": {}, \"mode\": \"{}\", \"timing\": \"{}\", \"handle_bytes\": {}, "
        "\"selections_per_rank\": {}, \"wire_bytes_per_layer\": {}, \"ops\": {{",
        CaseJson(r.bench_case), JsonEscape(r.mode), JsonEscape(r.timing), r.handle_bytes,
        Number(r.selections_per_rank), Number(r.wire_bytes));
    bool first_op = true;
    for (const auto& [op, summary] : r.ops) {
      out += fmt::format("{}\"{}\": {}", first_op ? "" : ", ", op, SummaryJson(summary));
      first_op = false;
    }
    out += fmt::format("}}, \"check\": \"{}\", \"error\": {}}}", JsonEscape(r.check),
                       r.error.empty() ? "null" : "\"" + JsonEscape(r.error) + "\"");
  }
  out += results.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

std::string ToMarkdown(const RunInfo& info, const std::map<std::string, OpSummary>& control,
                       const std::vector<Result>& results) {
  std::string out;
  const std::string daemons =
      info.nodes > 1 ? fmt::format(" over {} daemons (one deployment)", info.nodes) : "";
  out += fmt::format("## epd-bench: {} backend, {} ranks{}{}{}, {}\n\n", info.backend,
                     info.ranks, daemons, info.devices.empty() ? "" : ", ",
                     info.devices.empty() ? "" : info.devices[0], info.date);
  out += fmt::format(
      "median / p99 us per op (slowest rank per iteration), {} iterations after {} warm-up; "
      "(GB/s) = valid selections x H x token bytes / median; [MB] = payload bytes a rank's op "
      "moves (rows written by dispatch, with fp8 scales; rows read by combine)\n\n",
      info.iterations, info.warmup);
  out += "| case | mode | timing | update | dispatch (GB/s) | combine (GB/s) | handle MiB/rank | check |\n";
  out += "|---|---|---|---|---|---|---|---|\n";
  for (const Result& r : results) {
    if (!r.error.empty()) {
      out += fmt::format("| {} | {} | {} | error: {} | | | | |\n", r.bench_case.Label(), r.mode,
                         r.timing, r.error.substr(0, 160));
      continue;
    }
    out += fmt::format("| {} | {} | {} | {} | {} | {} | {:.1f} | {} |\n", r.bench_case.Label(),
                       r.mode, r.timing, Cell(r.ops, "update", false),
                       Cell(r.ops, "dispatch", true), Cell(r.ops, "combine", true),
                       static_cast<double>(r.handle_bytes) / (1024.0 * 1024.0),
                       r.check.substr(0, 60));
  }
  // Derived: the daemon's overhead (fenced - in-process) and the speed-up over
  // the NCCL baseline; the torch comparison is printed by torch_all_to_all.py.
  std::map<int, std::map<std::string, const Result*>> by_case;
  for (const Result& r : results) {
    if (r.error.empty()) by_case[r.bench_case.index][r.mode] = &r;
  }
  std::string derived;
  for (const auto& [index, modes] : by_case) {
    auto median = [&](const char* mode, const char* op) -> double {
      auto m = modes.find(mode);
      if (m == modes.end()) return 0.0;
      auto o = m->second->ops.find(op);
      return o == m->second->ops.end() ? 0.0 : o->second.median_us;
    };
    auto delta = [&](const char* op, const char* mode = kModeFenced) {
      const double a = median(kModeInproc, op), b = median(mode, op);
      return a > 0 && b > 0 ? fmt::format("{:+.1f}", b - a) : std::string("-");
    };
    auto speedup = [&](const char* mode, const char* op) {
      const double base = median(kModeNccl, op), epd = median(mode, op);
      return base > 0 && epd > 0 ? fmt::format("{:.2f}x", base / epd) : std::string("-");
    };
    auto nvlink = [&](const char* op) {
      auto m = modes.find(kModeInproc);
      if (m == modes.end() || m->second->timing != "gpu_events") return std::string("-");
      auto o = m->second->ops.find(op);
      return o == m->second->ops.end() ? std::string("-")
                                       : fmt::format("{:.0f}%", 100.0 * o->second.gbps / 450.0);
    };
    derived += fmt::format("| {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} |\n",
                           modes.begin()->second->bench_case.Label(), delta("update"),
                           delta("dispatch"), delta("combine"),
                           delta("dispatch", kModeFrontendLaunched),
                           delta("combine", kModeFrontendLaunched),
                           speedup(kModeInproc, "dispatch"),
                           speedup(kModeFenced, "dispatch"), speedup(kModeInproc, "combine"),
                           speedup(kModeFenced, "combine"), nvlink("dispatch"),
                           nvlink("combine"));
  }
  if (!derived.empty()) {
    out += "\n| case | daemon overhead update us | dispatch us | combine us | frontend-launched "
           "overhead dispatch / combine us | dispatch speed-up vs NCCL (inproc / fenced) | "
           "combine speed-up vs NCCL | inproc GB/s as % of NVLink 450 (dispatch / combine) "
           "|\n|---|---|---|---|---|---|---|---|\n";
    out += derived;
  }
  std::string wire;
  for (const Result& r : results) {
    if (!r.error.empty() || r.wire_bytes <= 0) continue;
    wire += fmt::format("| {} | {} | {:.3f} |\n", r.bench_case.Label(), r.mode, r.wire_bytes / 1e6);
  }
  if (!wire.empty()) {
    out +=
        "\n| case | mode | MB a rank's daemon sent per layer and rank (group payload, all "
        "nodes) |\n|---|---|---|\n";
    out += wire;
  }
  if (!control.empty()) {
    out += "\n| control round trip | median us | p99 us | iterations |\n|---|---|---|---|\n";
    for (const auto& [name, s] : control) {
      out += fmt::format("| {} | {:.1f} | {:.1f} | {} |\n", name, s.median_us, s.p99_us,
                         s.iterations);
    }
  }
  return out;
}

}  // namespace epd::bench
