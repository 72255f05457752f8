// epd_test_helper_client: a frontend process for the client-crash tests. It opens a session
// for --rank, joins --group with its own handle and shm buffer, binds routing with a blocking
// Update, prints "READY <shm name>" and then waits forever (mid-sequence) until killed.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "client/examples/rank_runner.h"

int main(int argc, char** argv) {
  std::string address, group;
  int rank = 0;
  epd::example::Problem p;
  CLI::App app{"epd integration-test frontend that gets killed mid-sequence"};
  app.add_option("--address", address)->required();
  app.add_option("--group", group)->required();
  app.add_option("--rank", rank)->required();
  app.add_option("--ranks", p.ranks);
  app.add_option("--experts", p.experts);
  app.add_option("--hidden", p.hidden);
  app.add_option("--tokens", p.max_tokens);
  app.add_option("--topk", p.top_k);
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const epd::Status& status) {
    std::printf("FAILED %s\n", status.ToString().c_str());
    std::fflush(stdout);
    return 1;
  };
  auto client = epd::Client::Connect(address);
  if (!client.ok()) return fail(client.status());
  epd::example::RankRunnerOptions options;
  options.group = group;
  auto runner = epd::example::RankRunner::Create(**client, p, rank, options);
  if (!runner.ok()) return fail(runner.status());
  const int n = p.max_tokens / 2;
  const epd::Status staged = (*runner)->Stage(epd::example::MakeInputs(p, 3, rank, 0, n, true));
  if (!staged.ok()) return fail(staged);
  const epd::Status updated =
      (*runner)->session().Update((*runner)->handle_id(), (*runner)->topk_ref(n),
                                  (*runner)->weights_ref(n), epd::BlockingOptions());
  if (!updated.ok()) return fail(updated);
  std::printf("READY %s\n", (*runner)->buffer().name().c_str());
  std::fflush(stdout);
  while (true) pause();
}
