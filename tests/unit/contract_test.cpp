#include "core/contract.h"
#include "core/error.h"

#include <ATen/ops/full_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

namespace trustep {
namespace {

const Contract kSend{boundary::kDispatchSend, c10::ScalarType::BFloat16, c10::DeviceType::CPU, 2, true};

at::Tensor rows(c10::ScalarType t, int64_t n = 4, int64_t w = 8) {
  return at::ones({n, w}, at::TensorOptions().dtype(t));
}

TEST(Contract, ConformingTensorPassesUnchanged) {
  ContractChecker checker(ContractPolicy::kStrict, 3);
  const at::Tensor t = rows(c10::ScalarType::BFloat16);
  const at::Tensor out = checker.enforce(kSend, t);
  EXPECT_TRUE(out.is_same(t));
  EXPECT_EQ(checker.total_casts(), 0);
}

TEST(Contract, FindsEachKindOfMismatch) {
  EXPECT_EQ(find_mismatch(kSend, rows(c10::ScalarType::Float)).kind, Mismatch::kDtype);
  EXPECT_EQ(find_mismatch(kSend, at::ones({4}, at::kBFloat16)).kind, Mismatch::kNdim);
  EXPECT_EQ(find_mismatch(kSend, rows(c10::ScalarType::BFloat16).t()).kind, Mismatch::kNotContiguous);
  Contract on_gpu = kSend;
  on_gpu.device = c10::DeviceType::CUDA;
  const auto report = find_mismatch(on_gpu, rows(c10::ScalarType::BFloat16));
  EXPECT_EQ(report.kind, Mismatch::kDevice);
  EXPECT_EQ(report.expected, "cuda");
  EXPECT_EQ(report.actual, "cpu");
  EXPECT_EQ(find_mismatch(kSend, at::Tensor()).kind, Mismatch::kNdim);
}

TEST(Contract, StrictThrowsNamingBoundaryExpectedActualRankAndLayer) {
  ContractChecker checker(ContractPolicy::kStrict, 3);
  try {
    checker.enforce(kSend, rows(c10::ScalarType::Float), /*layer=*/5);
    FAIL() << "expected ContractViolation";
  } catch (const ContractViolation& e) {
    EXPECT_EQ(e.boundary(), "dispatch.send");
    EXPECT_EQ(e.expected(), "bf16");
    EXPECT_EQ(e.actual(), "fp32");
    EXPECT_EQ(e.rank(), 3);
    EXPECT_FALSE(e.collective());
    EXPECT_EQ(std::string(e.what()),
              "contract violation at boundary 'dispatch.send' (rank 3, layer 5): expected bf16, got fp32");
  }
}

TEST(Contract, CastPolicyCastsOnceCountsEveryCastAndKeepsValues) {
  ContractChecker checker(ContractPolicy::kCast, 0);
  const at::Tensor t = at::full_like(rows(c10::ScalarType::Float), 1.5);
  const at::Tensor out = checker.enforce(kSend, t);
  EXPECT_EQ(out.scalar_type(), c10::ScalarType::BFloat16);
  EXPECT_TRUE(out.to(at::kFloat).equal(t));
  checker.enforce(kSend, t);
  EXPECT_EQ(checker.casts("dispatch.send"), 2);
  EXPECT_EQ(checker.casts("combine.send"), 0);
  EXPECT_EQ(checker.total_casts(), 2);
}

TEST(Contract, CastPolicyMakesNonContiguousTensorsContiguous) {
  ContractChecker checker(ContractPolicy::kCast, 0);
  const at::Tensor t = rows(c10::ScalarType::BFloat16, 8, 4).t();
  const at::Tensor out = checker.enforce(kSend, t);
  EXPECT_TRUE(out.is_contiguous());
  EXPECT_TRUE(out.equal(t));
}

TEST(Contract, CastPolicyNeverMovesDevicesOrReshapes) {
  ContractChecker checker(ContractPolicy::kCast, 1);
  EXPECT_THROW(checker.enforce(kSend, at::ones({4}, at::kFloat)), ContractViolation);
  EXPECT_EQ(checker.total_casts(), 0);
}

TEST(Contract, PolicyNamesParse) {
  EXPECT_EQ(parse_policy("cast", "--contract-policy"), ContractPolicy::kCast);
  EXPECT_EQ(parse_policy("strict", "--contract-policy"), ContractPolicy::kStrict);
  EXPECT_THROW(parse_policy("lenient", "--contract-policy"), OptionError);
}

}  // namespace
}  // namespace trustep
