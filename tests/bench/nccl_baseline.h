// The plain-NCCL baseline: expert-major dispatch / combine with the semantics of
// docs/design.md §3, built the way a user without epd would write it with NCCL's host API, in
// this process, one thread and one communicator per GPU (ncclCommInitAll):
//
//   update:   on the host, from topk_idx: the send order of the selections (by destination
//             expert, then token), per-expert send counts; uploaded (host clock).
//   dispatch: counts exchange (grouped ncclSend/ncclRecv of L counts per peer), copy of the
//             received counts to the host and a stream sync (the receive sizes must be known
//             on the host), pack kernel, payload exchange (grouped send/recv), and a kernel
//             that reorders the rows received per source rank into expert-major order
//             (expert, source rank, token). GPU events around it all.
//   combine:  the reverse: gather expert-major rows per source rank, grouped send/recv back,
//             and out[t] = sum over k ascending of w * row in fp32 (no FMA), in the token dtype.
//
// Only the expert-major layout (rank-major cases report an error). Routing and token values
// are those of every other mode, so the combine output is checked the same way.
#pragma once

#include <memory>
#include <string>

#include "tests/bench/bench_case.h"
#include "tests/bench/inproc.h"

namespace epd::bench {

class NcclBaseline {
 public:
  static StatusOr<std::unique_ptr<NcclBaseline>> Create(int ranks);
  ~NcclBaseline();
  std::string version() const;
  Result Run(const Case& c, const RunSettings& settings);

 private:
  struct Impl;
  explicit NcclBaseline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd::bench
