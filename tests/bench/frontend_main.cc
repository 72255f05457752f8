// epd-bench-frontend: one frontend rank of epd-bench's daemon modes. epd-bench starts one per
// rank; it is not meant to be run by hand. A separate binary because it links the client
// library (shared CUDA runtime) while epd-bench links the cuda backend (static runtime).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "tests/bench/frontend.h"

int main(int argc, char** argv) {
  epd::bench::FrontendOptions options;
  epd::bench::RunSettings settings;
  std::string cases_path, modes = "fenced,blocking";
  int op_timeout_ms = 30'000;
  bool no_check = false;
  CLI::App app{"epd-bench frontend rank (started by epd-bench)"};
  app.add_option("--rank", options.rank)->required();
  app.add_option("--ranks", options.ranks)->required();
  app.add_option("--connect", options.address)->required();
  app.add_option("--session-rank", options.session_rank);
  app.add_option("--device", options.device);
  app.add_flag("--spans-nodes", options.spans_nodes);
  app.add_option("--barrier", options.barrier_name)->required();
  app.add_option("--result", options.result_path)->required();
  app.add_option("--cases", cases_path)->required();
  app.add_option("--group-prefix", options.group_prefix);
  app.add_option("--modes", modes);
  app.add_option("--warmup", settings.warmup);
  app.add_option("--iterations", settings.iterations);
  app.add_option("--op-timeout-ms", op_timeout_ms);
  app.add_option("--control-iterations", options.control_iterations);
  app.add_flag("--no-check", no_check);
  CLI11_PARSE(app, argc, argv);
  settings.check = !no_check;
  settings.op_timeout = std::chrono::milliseconds(op_timeout_ms);
  options.fenced = modes.find("fenced") != std::string::npos;
  options.blocking = modes.find("blocking") != std::string::npos;
  options.frontend_launched = modes.find("frontend") != std::string::npos;

  std::ifstream in(cases_path);
  std::stringstream text;
  text << in.rdbuf();
  auto cases = epd::bench::ParseCases(text.str());
  if (!cases.ok()) {
    fmt::print(stderr, "epd-bench-frontend: {}\n", cases.status().ToString());
    return 2;
  }
  return epd::bench::RunFrontend(options, *cases, settings);
}
