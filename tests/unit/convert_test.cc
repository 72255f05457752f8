// Proto <-> core translation of the service layer: defaults, and errors that name the field.
#include "daemon/service/convert.h"

#include <gtest/gtest.h>

#include <limits>

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
  // Refused before it is expanded into a rank list (2^31 - 1 ranks would take 8 GB).
  proto.set_world_size(std::numeric_limits<int32_t>::max());
  const Status huge = FromProto(proto, "config").status();
  EXPECT_EQ(huge.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.message().find("config.world_size = 2147483647"), std::string::npos)
      << huge.message();
  EXPECT_NE(huge.message().find("at most 4096 ranks"), std::string::npos) << huge.message();
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

// The GPU's UUID travels both ways: the daemon finds the GPU by it (memory_device.h).
TEST(ConvertTest, CudaMemorySourceKeepsItsDeviceAndUuid) {
  v1::MemorySource proto;
  proto.set_cuda_ipc_handle(std::string(64, 'h'));
  proto.set_device(0);
  proto.set_device_uuid("GPU-00000000-0000-0000-0000-0000000000bb");
  proto.set_offset(128);
  proto.set_size(4096);
  auto source = FromProto(proto, "source");
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  EXPECT_EQ(source->kind, MemorySource::Kind::kCudaIpc);
  EXPECT_EQ(source->device, 0);
  EXPECT_EQ(source->device_uuid, "GPU-00000000-0000-0000-0000-0000000000bb");
  const v1::MemorySource back = ToProto(*source);
  EXPECT_EQ(back.device_uuid(), proto.device_uuid());
  EXPECT_EQ(back.cuda_ipc_handle(), proto.cuda_ipc_handle());
  EXPECT_EQ(back.offset(), 128u);
}

TEST(ConvertTest, GroupConfigCarriesTheFp8Payload) {
  v1::GroupConfig proto;
  proto.set_name("g");
  proto.set_world_size(2);
  proto.set_experts(4);
  proto.set_hidden(256);
  proto.set_max_tokens_per_rank(8);
  proto.set_top_k(2);
  auto plain = FromProto(proto, "config");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->fp8_dispatch());
  EXPECT_EQ(ToProto(*plain).dispatch_dtype(), v1::DTYPE_BF16);  // effective: the token dtype
  EXPECT_EQ(ToProto(*plain).scale_format(), v1::SCALE_FORMAT_UNSPECIFIED);
  proto.set_dispatch_dtype(v1::DTYPE_BF16);  // the token dtype, spelled out
  EXPECT_FALSE(FromProto(proto, "config")->fp8_dispatch());

  proto.set_dispatch_dtype(v1::DTYPE_FP8_E4M3);
  proto.set_scale_format(v1::SCALE_FORMAT_UE8M0);
  auto fp8 = FromProto(proto, "config");
  ASSERT_TRUE(fp8.ok()) << fp8.status().ToString();
  EXPECT_TRUE(fp8->fp8_dispatch());
  EXPECT_EQ(fp8->scale_format, ScaleFormat::kUe8m0);
  v1::GroupConfig back = ToProto(*fp8);
  EXPECT_EQ(back.dispatch_dtype(), v1::DTYPE_FP8_E4M3);
  EXPECT_EQ(back.scale_format(), v1::SCALE_FORMAT_UE8M0);

  proto.set_dispatch_dtype(v1::DTYPE_FP16);
  EXPECT_NE(FromProto(proto, "config")
                .status()
                .message()
                .find("config.dispatch_dtype = DTYPE_FP16 must be unset, the token dtype (bf16)"),
            std::string::npos)
      << FromProto(proto, "config").status().message();
  proto.set_dispatch_dtype(v1::DTYPE_FP8_E4M3);
  proto.set_scale_format(static_cast<v1::ScaleFormat>(9));
  EXPECT_NE(FromProto(proto, "config").status().message().find("config.scale_format = 9"),
            std::string::npos);
}

TEST(ConvertTest, DispatchTakesOptionalScalesAndHandlesExportThem) {
  v1::DispatchRequest request;
  auto* x = request.mutable_x();
  x->set_buffer_id(1);
  x->set_dtype(v1::DTYPE_FP8_E4M3);
  x->add_shape(4);
  x->add_shape(256);
  DispatchRequest out;
  OpOptions options;
  ASSERT_TRUE(FromProto(request, &out, &options).ok());
  EXPECT_EQ(out.x.dtype, DType::kFp8E4m3);
  EXPECT_FALSE(out.x_scales.has_value());
  auto* scales = request.mutable_x_scales();
  scales->set_buffer_id(2);
  scales->set_offset_bytes(64);
  scales->set_dtype(v1::DTYPE_UINT8);
  scales->add_shape(4);
  scales->add_shape(2);
  ASSERT_TRUE(FromProto(request, &out, &options).ok());
  ASSERT_TRUE(out.x_scales.has_value());
  EXPECT_EQ(out.x_scales->dtype, DType::kUint8);
  EXPECT_EQ(out.x_scales->offset_bytes, 64u);
  scales->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_NE(FromProto(request, &out, &options).message().find("x_scales.dtype"), std::string::npos);

  HandleLayout layout;
  layout.recv_scales_offset = 4096;
  EXPECT_EQ(ToProto(layout).recv_scales_offset(), 4096u);
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

TEST(ConvertTest, GroupConfigResolvesAutoAndCarriesTheHighThroughputKnobs) {
  v1::GroupConfig proto;
  proto.set_name("prefill");
  proto.set_world_size(2);
  proto.set_experts(8);
  proto.set_hidden(64);
  proto.set_max_tokens_per_rank(1024);
  proto.set_top_k(2);
  proto.set_algorithm(v1::ALGORITHM_AUTO);
  proto.set_recv_capacity(1500);
  proto.set_sm_budget(8);
  auto config = FromProto(proto, "config");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->algorithm, Algorithm::kHighThroughput);
  EXPECT_EQ(config->recv_capacity, 1500);
  EXPECT_EQ(config->sm_budget, 8);
  v1::GroupConfig back = ToProto(*config);
  EXPECT_EQ(back.algorithm(), v1::ALGORITHM_HIGH_THROUGHPUT);
  EXPECT_EQ(back.recv_capacity(), 1500);
  EXPECT_EQ(back.sm_budget(), 8);
  EXPECT_EQ(back.expert_capacity(), 0) << "a valid high-throughput request again";

  proto.set_max_tokens_per_rank(1023);
  proto.clear_recv_capacity();
  proto.clear_sm_budget();
  config = FromProto(proto, "config");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->algorithm, Algorithm::kLowLatency);
  back = ToProto(*config);
  EXPECT_EQ(back.expert_capacity(), 2 * 1023);
  EXPECT_EQ(back.recv_capacity(), 0);

  // The effective defaults of a high-throughput group come back filled in.
  proto.set_algorithm(v1::ALGORITHM_HIGH_THROUGHPUT);
  config = FromProto(proto, "config");
  ASSERT_TRUE(config.ok());
  back = ToProto(*config);
  EXPECT_EQ(back.recv_capacity(), 2 * 1023);
  EXPECT_EQ(back.sm_budget(), 24);
}

TEST(ConvertTest, HighThroughputHandlesExportThePackedLayout) {
  GroupConfig config;
  config.name = "ht";
  config.ranks = {0, 1};
  config.experts = 8;
  config.hidden = 64;
  config.max_tokens_per_rank = 16;
  config.top_k = 2;
  config.algorithm = Algorithm::kHighThroughput;
  const HandleLayout layout = ComputeHandleLayout(config);
  const v1::HandleBuffers proto = ToProto(layout);
  EXPECT_EQ(proto.recv_rows(), 32u);
  EXPECT_EQ(proto.recv_rank_counts_offset(), layout.recv_rank_counts_offset);
  EXPECT_EQ(proto.recv_rank_offsets_offset(), layout.recv_rank_offsets_offset);
  EXPECT_EQ(proto.expert_rows_offset(), layout.expert_rows_offset);
  EXPECT_EQ(proto.expert_rows_entries(), 32u * 2);
  EXPECT_NE(proto.expert_rows_offset(), 0u);
}

TEST(ConvertTest, GroupSummaryCarriesEachHostedRanksTransport) {
  GroupSummary group;
  group.config.name = "spanning";
  RankTransportState formed;
  formed.group_rank = 2;
  formed.formed = true;
  formed.generation = 3;
  formed.formations = 2;
  formed.failures = 1;
  formed.last_failure = "group 'spanning': node 1 is down";
  formed.last_failure_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1234));
  RankTransportState never;
  never.group_rank = 3;
  group.transport = {formed, never};
  v1::GroupSummary proto;
  ToProto(group, &proto);
  ASSERT_EQ(proto.transport_size(), 2);
  const v1::RankTransport& first = proto.transport(0);
  EXPECT_EQ(first.group_rank(), 2);
  EXPECT_TRUE(first.formed());
  EXPECT_EQ(first.generation(), 3);
  EXPECT_EQ(first.formations(), 2u);
  EXPECT_EQ(first.failures(), 1u);
  EXPECT_EQ(first.last_failure(), "group 'spanning': node 1 is down");
  EXPECT_EQ(first.last_failure_unix_ms(), 1234);
  const v1::RankTransport& second = proto.transport(1);
  EXPECT_EQ(second.group_rank(), 3);
  EXPECT_FALSE(second.formed());
  EXPECT_EQ(second.generation(), -1);
  EXPECT_EQ(second.last_failure_unix_ms(), 0) << "no failure, no time";
}

}  // namespace
}  // namespace epd::service
