#include "daemon/core/buffer_registry.h"

#include <gtest/gtest.h>

#include <vector>

namespace epd {
namespace {

class HostMemory : public Memory {
 public:
  explicit HostMemory(size_t bytes) : bytes_(bytes) {}
  void* data() const override { return const_cast<std::byte*>(bytes_.data()); }
  size_t size() const override { return bytes_.size(); }
  int device() const override { return -1; }

 private:
  std::vector<std::byte> bytes_;
};

TensorRef Ref(ObjectId id, uint64_t offset, DType dtype, std::vector<int64_t> shape) {
  return TensorRef{id, offset, dtype, std::move(shape)};
}

class BufferRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = std::make_shared<HostMemory>(1024);
    registry_.Add(3, memory_);
  }
  std::shared_ptr<HostMemory> memory_;
  BufferRegistry registry_;
};

TEST_F(BufferRegistryTest, ResolvesInsideTheBuffer) {
  auto view = registry_.Resolve(Ref(3, 256, DType::kFp32, {3, 64}), "x");
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ(view->data, static_cast<char*>(memory_->data()) + 256);
  EXPECT_EQ(view->rows(), 3);
  // Exactly up to the end is fine.
  EXPECT_TRUE(registry_.Resolve(Ref(3, 0, DType::kBf16, {512}), "x").ok());
  // Zero rows are a valid (empty) tensor.
  EXPECT_TRUE(registry_.Resolve(Ref(3, 1024, DType::kBf16, {0, 64}), "x").ok());
}

TEST_F(BufferRegistryTest, RejectsATensorOutsideItsBuffer) {
  auto view = registry_.Resolve(Ref(3, 512, DType::kFp32, {4, 64}), "x");
  EXPECT_EQ(view.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(view.status().message().find("x (buffer 3, offset_bytes = 512, 1024 bytes) lies "
                                         "outside the buffer's 1024 bytes"),
            std::string::npos)
      << view.status().message();
  EXPECT_FALSE(registry_.Resolve(Ref(3, 2048, DType::kFp32, {0}), "x").ok());
}

TEST_F(BufferRegistryTest, RejectsHugeShapesWithoutOverflow) {
  auto view = registry_.Resolve(Ref(3, 0, DType::kInt64, {1LL << 40, 1LL << 40}), "topk_idx");
  EXPECT_EQ(view.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(view.status().message().find("topk_idx.shape"), std::string::npos);
}

TEST_F(BufferRegistryTest, RejectsUnknownIdsNegativeExtentsAndMisalignment) {
  EXPECT_EQ(registry_.Resolve(Ref(9, 0, DType::kFp32, {1}), "out").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(registry_.Resolve(Ref(3, 0, DType::kFp32, {-1, 4}), "out").status().code(),
            StatusCode::kInvalidArgument);
  auto misaligned = registry_.Resolve(Ref(3, 8, DType::kFp32, {1}), "out");
  EXPECT_EQ(misaligned.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(misaligned.status().message().find("out.offset_bytes = 8"), std::string::npos);
  EXPECT_EQ(registry_.Resolve(Ref(3, 0, DType::kFp32, {}), "out").status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(BufferRegistryTest, RemoveForgetsTheBuffer) {
  EXPECT_TRUE(registry_.Remove(3).ok());
  EXPECT_EQ(registry_.Remove(3).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.Find(3), nullptr);
}

TEST(ExpectTest, NamesTheFieldTheDimensionAndTheValues) {
  TensorView view;
  view.dtype = DType::kBf16;
  view.shape = {5, 4096};
  Status status = ExpectShape(view, "x", {5, 7168}, {"n", "hidden"});
  EXPECT_EQ(status.message(), "x.shape[1] = 4096 does not match hidden = 7168");
  EXPECT_TRUE(ExpectShape(view, "x", {-1, 4096}, {"n", "hidden"}).ok());
  EXPECT_FALSE(ExpectShape(view, "x", {5}, {"n"}).ok());
  Status dtype = ExpectDType(view, "x", DType::kFp16);
  EXPECT_EQ(dtype.message(), "x.dtype = bf16 does not match the expected fp16");
}

}  // namespace
}  // namespace epd
