// MoeHarness: one group of the shared CUDA backend with a handle per rank, test-owned input
// and output buffers, and the cpu reference (reference_ops.h) run on host copies of the same
// inputs, so every step can be compared bit for bit.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/core/backend.h"
#include "tests/gpu/gpu_test_env.h"

namespace epd::gputest {

struct CaseSpec {
  std::string name;
  int ranks = 2;
  int experts = 8;
  int hidden = 128;
  int tokens = 16;  // T
  int top_k = 2;
  DType dtype = DType::kBf16;
  Layout layout = Layout::kExpertMajor;
  int capacity = 0;  // 0: R * T
  // High-throughput: the packed layout (layout ignored), recv_capacity rows (0: R * T).
  Algorithm algorithm = Algorithm::kLowLatency;
  int recv_capacity = 0;
  int sm_budget = 0;  // high-throughput blocks (0: the default)
  // FP8 dispatch (bf16, hidden % 128 == 0): rows arrive as e4m3 + scales; with prequantized
  // the ranks pass their own e4m3 bytes and scales (random bytes: they must be copied as is).
  DispatchFormat dispatch_format = DispatchFormat::kTokenDType;
  ScaleFormat scale_format = ScaleFormat::kFp32;
  bool prequantized = false;
  // Handles rank 0 creates before the tested one, so its handle slot differs from its peers'
  // and every dispatch must read the destinations' slots from the inbox.
  int skewed_slots = 0;
};

enum class RoutingKind {
  kRandom,     // K distinct experts per token
  kSparse,     // like kRandom with ~1/4 of the entries -1
  kAllAbsent,  // every entry -1
  kHotExpert,  // k = 0 is the same expert for every token of every rank
};

// One rank's inputs of a round, on the host.
struct RankInput {
  int n = 0;
  bool idx64 = false;
  bool has_weights = true;
  std::vector<int64_t> idx;    // [n, K]
  std::vector<float> weights;  // [n, K]
  std::vector<char> x;         // [n, H] token dtype
  std::vector<char> xq;        // prequantized fp8: [n, H] e4m3
  std::vector<char> x_scales;  // prequantized fp8: [n, H / 128] fp32 or ue8m0
};

class MoeHarness {
 public:
  // devices[r]: the CUDA device of node rank r (default: r).
  MoeHarness(Backend& backend, const CaseSpec& spec, std::vector<int> devices = {});
  ~MoeHarness();
  const GroupConfig& config() const { return config_; }
  BackendHandle& handle(int rank) { return *handles_[rank]; }
  BackendGroup* group() const { return group_.get(); }

  std::vector<RankInput> MakeInputs(RoutingKind kind, const std::vector<int>& n, uint64_t seed,
                                    bool idx64, bool weights) const;

  // Each step runs on one thread per rank and returns every rank's Complete() status.
  std::vector<Status> Update(const std::vector<RankInput>& inputs);
  std::vector<Status> Dispatch();
  // Rank r's dispatch arguments for the inputs of the last Update (enqueue it yourself).
  DispatchArgs DispatchArgsOf(int r) const;
  // Like Dispatch, but every rank except `late_rank` enqueues first; `while_late` runs before
  // the late rank enqueues (the others' ops are then on their streams, waiting).
  std::vector<Status> DispatchWithLateRank(int late_rank, const std::function<void()>& while_late);
  // Fills expert outputs with random rows (in recv_x itself when in_place), then combines.
  std::vector<Status> Combine(bool in_place, uint64_t seed);

  // Compare with the reference; `bound[r]` is the token count rank r's routing holds
  // (0 where its update was rejected).
  void ExpectDispatchMatches(const std::vector<RankInput>& inputs, const std::vector<int>& bound);
  void ExpectCombineMatches(const std::vector<RankInput>& inputs, const std::vector<int>& bound);

 private:
  struct RankBuffers;
  void BuildReference(const std::vector<RankInput>& inputs, const std::vector<int>& bound);
  size_t row_bytes() const;  // of a token (x, out, expert outputs)
  size_t used_rows(int rank) const;
  int device_of(int rank) const { return devices_.empty() ? rank : devices_[rank]; }

  Backend& backend_;
  std::vector<int> devices_;
  GroupConfig config_;
  HandleLayout layout_;
  std::unique_ptr<BackendGroup> group_;
  std::vector<std::unique_ptr<BackendHandle>> handles_;
  std::vector<std::unique_ptr<BackendHandle>> skew_handles_;  // CaseSpec::skewed_slots
  std::vector<std::unique_ptr<RankBuffers>> buffers_;
  // reference state of the last round
  std::vector<std::vector<int32_t>> ref_idx_, ref_counts_;
  std::vector<std::vector<float>> ref_weights_;
  std::vector<std::vector<char>> ref_recv_;  // exported region per rank
  std::vector<std::vector<char>> z_host_;    // expert outputs of the last Combine
  bool last_in_place_ = false;
  bool prequantized_ = false;
};

// The table cases' rounds: every rank cycles through n in {T, T-1, 1, 0}; int32 then int64
// ids; weights given, then absent (1.0); expert output in a separate buffer, then written in
// place in recv_x (never with fp8 dispatch, whose recv_x is e4m3). Every step is compared with
// the reference, and no op may allocate.
void RunRounds(Backend& backend, MoeHarness& harness, RoutingKind routing);
// RunRounds of `spec` with every rank on GPU 0 (the shared-GPU backend of gpu_test_env.h).
void RunRoundsOnSharedGpu(const CaseSpec& spec, RoutingKind routing);

void ExpectBytesEqual(const void* expected, const void* actual, size_t bytes, size_t element_bytes,
                      const std::string& what);

}  // namespace epd::gputest
