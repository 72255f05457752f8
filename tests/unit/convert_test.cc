// Proto <-> core translation of the service layer: defaults, and errors that name the field.
#include "daemon/service/convert.h"

#include <gtest/gtest.h>

namespace epd::service {
namespace {

TEST(ConvertTest, GroupConfigDefaultsFillRanksDtypeLayoutAndAlgorithm) {
  v1::GroupConfig proto;
  proto.set_name("g");
  proto.set_world_size(4);
  proto.set_experts(16);
  proto.set_hidden(128);
  proto.set_max_tokens_per_rank(8);
  proto.set_top_k(2);
  auto config = FromProto(proto, "config");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->ranks, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(config->dtype, DType::kBf16);
  EXPECT_EQ(config->layout, Layout::kExpertMajor);
  EXPECT_EQ(config->algorithm, Algorithm::kLowLatency);
  EXPECT_EQ(config->capacity(), 4 * 8);
  // And back: the filled-in values travel.
  v1::GroupConfig back = ToProto(*config);
  EXPECT_EQ(back.ranks_size(), 4);
  EXPECT_EQ(back.dtype(), v1::DTYPE_BF16);
  EXPECT_EQ(back.layout(), v1::LAYOUT_EXPERT_MAJOR);
}

TEST(ConvertTest, GroupConfigContradictionsNameTheFields) {
  v1::GroupConfig proto;
  proto.set_name("g");
  proto.add_ranks(0);
  proto.add_ranks(1);
  proto.set_world_size(3);
  auto config = FromProto(proto, "config");
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("config.world_size = 3"), std::string::npos)
      << config.status().message();
  proto.clear_ranks();
  proto.set_world_size(0);
  EXPECT_NE(FromProto(proto, "config").status().message().find("config.world_size = 0"),
            std::string::npos);
}

TEST(ConvertTest, TensorRefOnlyRefusesWhatTheCoreCannotRepresent) {
  v1::TensorRef proto;
  proto.set_buffer_id(3);
  auto unspecified = FromProto(proto, "x");
  EXPECT_EQ(unspecified.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unspecified.status().message().find("x.dtype"), std::string::npos);
  proto.set_dtype(v1::DTYPE_FP16);
  // A negative extent is the engine's to refuse (op_validation_test): it travels as is.
  proto.add_shape(4);
  proto.add_shape(-1);
  auto negative = FromProto(proto, "x");
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(negative->shape, (std::vector<int64_t>{4, -1}));
  proto.set_shape(1, 64);
  proto.set_offset_bytes(256);
  auto ref = FromProto(proto, "x");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->buffer_id, 3u);
  EXPECT_EQ(ref->offset_bytes, 256u);
  EXPECT_EQ(ref->dtype, DType::kFp16);
  EXPECT_EQ(ref->shape, (std::vector<int64_t>{4, 64}));
}

TEST(ConvertTest, MemorySourceNeedsALocation) {
  v1::MemorySource proto;
  proto.set_size(64);
  auto missing = FromProto(proto, "source");
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("source.location"), std::string::npos);
  proto.set_shm_name("/epd-x");
  auto source = FromProto(proto, "source");
  ASSERT_TRUE(source.ok());
  EXPECT_EQ(source->kind, MemorySource::Kind::kHostShm);
  EXPECT_EQ(source->shm_name, "/epd-x");
  EXPECT_EQ(source->size, 64u);
}

TEST(ConvertTest, NodeInfoCarriesMpsStateAndComputeModePerGpu) {
  NodeDescription node;
  node.backend = "cuda";
  node.ranks = 2;
  node.gpus.resize(2);
  node.gpus[0].index = 0;
  node.gpus[0].mps_active = true;
  node.gpus[0].compute_mode = ComputeMode::kExclusiveProcess;
  node.gpus[1].index = 1;
  node.gpus[1].compute_mode = ComputeMode::kDefault;
  v1::NodeInfo out;
  ToProto(node, {}, "test", &out);
  ASSERT_EQ(out.gpus_size(), 2);
  EXPECT_TRUE(out.gpus(0).mps_active());
  EXPECT_EQ(out.gpus(0).compute_mode(), v1::COMPUTE_MODE_EXCLUSIVE_PROCESS);
  EXPECT_FALSE(out.gpus(1).mps_active());
  EXPECT_EQ(out.gpus(1).compute_mode(), v1::COMPUTE_MODE_DEFAULT);
  // The cpu backend has no GPUs: nothing claims MPS.
  NodeDescription cpu;
  cpu.backend = "cpu";
  cpu.ranks = 1;
  v1::NodeInfo cpu_out;
  ToProto(cpu, {}, "test", &cpu_out);
  EXPECT_EQ(cpu_out.gpus_size(), 0);
}

}  // namespace
}  // namespace epd::service
