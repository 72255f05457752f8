// The dispatch/combine case table on the CUDA backend: dispatch and combine must match the cpu
// reference bit for bit for every dtype, layout, world size, token count (0, 1, T-1, T),
// routing shape (random, sparse, all -1, hot expert), expert count and hidden size.
#include <gtest/gtest.h>

#include <ostream>

#include "kernels/routing_scratch.h"
#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

struct TableCase {
  CaseSpec spec;
  RoutingKind routing = RoutingKind::kRandom;
};

// gtest prints the case name, not the parameter's bytes.
void PrintTo(const TableCase& c, std::ostream* os) { *os << c.spec.name; }

std::string Name(DType d) { return std::string(DTypeName(d)); }

std::vector<TableCase> Cases() {
  std::vector<TableCase> cases;
  // Every dtype x layout x world size, on a hidden size that is not a power of two.
  for (DType dtype : {DType::kBf16, DType::kFp16, DType::kFp32}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      for (int ranks : {2, 4}) {
        CaseSpec s;
        s.name = "Matrix_" + Name(dtype) + "_" + std::string(LayoutName(layout)) + "_R" +
                 std::to_string(ranks);
        s.ranks = ranks;
        s.experts = 64;
        s.hidden = 4104;
        s.tokens = 32;
        s.top_k = 8;
        s.dtype = dtype;
        s.layout = layout;
        cases.push_back({s, RoutingKind::kSparse});
      }
    }
  }
  // Expert counts and hidden sizes of the case table (bf16, both layouts, 4 ranks; 8 experts
  // on 2).
  struct Shape {
    int experts, hidden, tokens, top_k, ranks;
  };
  for (Shape shape : {Shape{8, 128, 16, 4, 2}, Shape{8, 7168, 16, 4, 4}, Shape{64, 128, 64, 8, 4},
                      Shape{256, 128, 64, 8, 4}, Shape{256, 7168, 128, 8, 4}}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      CaseSpec s;
      s.name = "Shape_E" + std::to_string(shape.experts) + "_H" + std::to_string(shape.hidden) +
               "_R" + std::to_string(shape.ranks) + "_" + std::string(LayoutName(layout));
      s.ranks = shape.ranks;
      s.experts = shape.experts;
      s.hidden = shape.hidden;
      s.tokens = shape.tokens;
      s.top_k = shape.top_k;
      s.layout = layout;
      cases.push_back({s, RoutingKind::kRandom});
    }
  }
  // Routing shapes.
  for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
    for (RoutingKind routing : {RoutingKind::kAllAbsent, RoutingKind::kHotExpert}) {
      CaseSpec s;
      s.name = std::string(routing == RoutingKind::kAllAbsent ? "AllAbsent_" : "HotExpert_") +
               std::string(LayoutName(layout));
      s.ranks = 4;
      s.experts = 64;
      s.hidden = 1024;
      s.tokens = 32;
      s.top_k = 6;
      s.layout = layout;
      cases.push_back({s, routing});
    }
  }
  // Small cases (also what compute-sanitizer runs): one rank and two ranks.
  for (int ranks : {1, 2}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      CaseSpec s;
      s.name = "Small_R" + std::to_string(ranks) + "_" + std::string(LayoutName(layout));
      s.ranks = ranks;
      s.experts = 8;
      s.hidden = 136;
      s.tokens = 16;
      s.top_k = 3;
      s.layout = layout;
      cases.push_back({s, RoutingKind::kSparse});
    }
  }
  // T past the point from which the routing bind runs chunked (kernels/routing_scratch.h):
  // rounds bind T and T - 1 tokens chunked and 1 and 0 in one block, on the handle's scratch.
  for (int ranks : {1, 2}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      CaseSpec s;
      s.name = "ChunkedBind_R" + std::to_string(ranks) + "_" + std::string(LayoutName(layout));
      s.ranks = ranks;
      s.experts = 256;
      s.hidden = 256;
      s.tokens = kernels::kRoutingChunkedFasterFromTokens + 33;
      s.top_k = 8;
      s.layout = layout;
      cases.push_back({s, RoutingKind::kRandom});
    }
  }
  return cases;
}

class DispatchCombineTest : public ::testing::TestWithParam<TableCase> {};

TEST_P(DispatchCombineTest, MatchesReferenceBitForBit) {
  const TableCase& c = GetParam();
  EPD_REQUIRE_GPUS(c.spec.ranks);
  Backend& backend = *SharedBackend();
  MoeHarness harness(backend, c.spec);
  if (::testing::Test::HasFailure()) return;
  RunRounds(backend, harness, c.routing);
}

INSTANTIATE_TEST_SUITE_P(Table, DispatchCombineTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<TableCase>& info) {
                           return info.param.spec.name;
                         });

}  // namespace
}  // namespace epd::gputest
