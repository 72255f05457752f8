// 2-, 4- and 8-rank groups on whatever GPUs are visible: node ranks share GPUs round-robin
// (SharedGpuBackend), so the multi-rank protocol and the bit-exact results are checked on
// 1- and 2-GPU hosts too. Ranks on one GPU still meet only through device flags.
#include <gtest/gtest.h>

#include <ostream>

#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

struct SharedCase {
  CaseSpec spec;
  RoutingKind routing = RoutingKind::kSparse;
};

// gtest prints the case name, not the parameter's bytes.
void PrintTo(const SharedCase& c, std::ostream* os) { *os << c.spec.name; }

std::vector<SharedCase> Cases() {
  std::vector<SharedCase> cases;
  for (int ranks : {4, 8}) {
    for (DType dtype : {DType::kBf16, DType::kFp16, DType::kFp32}) {
      for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
        CaseSpec s;
        s.name = "R" + std::to_string(ranks) + "_" + std::string(DTypeName(dtype)) + "_" +
                 std::string(LayoutName(layout));
        s.ranks = ranks;
        s.experts = 64;
        s.hidden = 4104;
        s.tokens = 24;
        s.top_k = 8;
        s.dtype = dtype;
        s.layout = layout;
        cases.push_back({s, RoutingKind::kSparse});
      }
    }
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      for (RoutingKind routing : {RoutingKind::kAllAbsent, RoutingKind::kHotExpert}) {
        CaseSpec s;
        s.name = "R" + std::to_string(ranks) +
                 (routing == RoutingKind::kAllAbsent ? "_AllAbsent_" : "_HotExpert_") +
                 std::string(LayoutName(layout));
        s.ranks = ranks;
        s.experts = 256;
        s.hidden = 7168;
        s.tokens = 16;
        s.top_k = 8;
        s.layout = layout;
        cases.push_back({s, routing});
      }
    }
  }
  // Rank 0's handle in another slot than its peers': every source must find a destination's
  // receive buffers in the slot that destination published, not in its own slot.
  for (int ranks : {2, 4}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      CaseSpec s;
      s.name = "R" + std::to_string(ranks) + "_SkewedSlots_" + std::string(LayoutName(layout));
      s.ranks = ranks;
      s.experts = 32;
      s.hidden = 2048;
      s.tokens = 16;
      s.top_k = 4;
      s.layout = layout;
      s.skewed_slots = 3;
      cases.push_back({s, RoutingKind::kSparse});
    }
  }
  return cases;
}

class SharedGpuTest : public ::testing::TestWithParam<SharedCase> {};

TEST_P(SharedGpuTest, MatchesReferenceBitForBit) {
  const SharedCase& c = GetParam();
  EPD_REQUIRE_GPUS(1);
  RunRoundsOnSharedGpu(c.spec, c.routing);
}

INSTANTIATE_TEST_SUITE_P(Table, SharedGpuTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<SharedCase>& info) {
                           return info.param.spec.name;
                         });

}  // namespace
}  // namespace epd::gputest
