// verify_headers decides, from the gathered headers alone, whether a collective may proceed.
// These cases build the gathered matrix by hand, one disagreement at a time.
#include "comm/wire_header.h"
#include "core/contract.h"
#include "core/dtype.h"
#include "core/error.h"

#include <gtest/gtest.h>

namespace trustep::comm {
namespace {

constexpr int64_t kBf16 = static_cast<int64_t>(WireDtype::kBFloat16);
constexpr int64_t kFp32 = static_cast<int64_t>(WireDtype::kFloat32);

HeaderFacts a2a(int world, int rank) {
  HeaderFacts f;
  f.op = CollectiveOp::kAllToAllV;
  f.seq = 7;
  f.boundary = "dispatch.send";
  f.layer = 2;
  f.declared_dtype = f.actual_dtype = kBf16;
  f.expected_device = f.actual_device = 0;  // cpu
  f.expected_ndim = f.actual_ndim = 2;
  f.row_width = 16;
  f.counts.assign(world, rank + 1);
  f.rows = static_cast<int64_t>(world) * (rank + 1);
  return f;
}

std::vector<int64_t> gather(const std::vector<HeaderFacts>& facts) {
  const int world = static_cast<int>(facts.size());
  std::vector<int64_t> all;
  for (const auto& f : facts) {
    const auto row = pack_header(f, world);
    all.insert(all.end(), row.begin(), row.end());
  }
  return all;
}

std::vector<HeaderFacts> agreeing(int world) {
  std::vector<HeaderFacts> v;
  for (int r = 0; r < world; ++r) v.push_back(a2a(world, r));
  return v;
}

template <typename E>
std::string error_of(const std::vector<HeaderFacts>& facts) {
  try {
    verify_headers(gather(facts), static_cast<int>(facts.size()));
  } catch (const E& e) {
    EXPECT_TRUE(e.collective());
    return e.what();
  }
  return "no error";
}

TEST(WireHeader, PackUnpackRoundTrip) {
  HeaderFacts f = a2a(4, 2);
  f.boundary = "a.boundary.name.longer.than.32.characters";
  const auto row = pack_header(f, 4);
  ASSERT_EQ(static_cast<int64_t>(row.size()), header_length(4));
  const HeaderFacts g = unpack_header(row.data(), 4);
  EXPECT_EQ(g.boundary, f.boundary.substr(0, kBoundaryChars));
  EXPECT_EQ(g.seq, 7);
  EXPECT_EQ(g.layer, 2);
  EXPECT_EQ(g.counts, f.counts);
  EXPECT_EQ(g.rows, f.rows);
  EXPECT_EQ(g.row_width, 16);
}

TEST(WireHeader, AgreeingRanksPassAndRecvCountsAreTheColumn) {
  auto facts = agreeing(3);
  facts[1].counts = {5, 0, 9};
  facts[1].rows = 14;
  EXPECT_NO_THROW(verify_headers(gather(facts), 3));
  EXPECT_EQ(recv_counts_from(gather(facts), 3, 0), (std::vector<int64_t>{1, 5, 3}));
  EXPECT_EQ(recv_counts_from(gather(facts), 3, 1), (std::vector<int64_t>{1, 0, 3}));
}

TEST(WireHeader, ActualDtypeDifferentFromDeclaredNamesTheRank) {
  auto facts = agreeing(4);
  facts[2].actual_dtype = kFp32;
  EXPECT_EQ(error_of<ContractViolation>(facts),
            "contract violation at boundary 'dispatch.send' (rank 2, layer 2): expected bf16, got fp32 "
            "(policy strict) [raised on every rank]");
}

TEST(WireHeader, RanksDeclaringDifferentDtypesDisagree) {
  auto facts = agreeing(2);
  facts[1].declared_dtype = facts[1].actual_dtype = kFp32;
  const std::string e = error_of<ContractViolation>(facts);
  EXPECT_NE(e.find("rank 0 declares bf16, rank 1 declares fp32"), std::string::npos) << e;
}

TEST(WireHeader, DifferentCollectivesOrSequenceNumbersAreReported) {
  auto facts = agreeing(2);
  facts[1].op = CollectiveOp::kBarrier;
  facts[1].boundary = "";
  EXPECT_EQ(error_of<CommError>(facts),
            "ranks are not in the same collective: all_to_all_v #7 at boundary 'dispatch.send' on rank 0, but "
            "barrier #7 on rank 1 [raised on every rank]");
  facts = agreeing(2);
  facts[1].seq = 8;
  EXPECT_NE(error_of<CommError>(facts).find("all_to_all_v #8"), std::string::npos);
}

TEST(WireHeader, RowWidthCountsAndShapesAreChecked) {
  auto facts = agreeing(2);
  facts[1].row_width = 8;
  EXPECT_NE(error_of<ContractViolation>(facts).find("expected rows of 16 elements (as rank 0), got rows of 8"),
            std::string::npos);
  facts = agreeing(2);
  facts[0].rows = 3;
  EXPECT_NE(error_of<CommError>(facts).find("send counts add up to 2 rows but the tensor has 3"), std::string::npos);
  facts = agreeing(2);
  facts[1].counts = {-1, 5};
  EXPECT_NE(error_of<CommError>(facts).find("negative send count -1 for peer 0"), std::string::npos);
  facts = agreeing(2);
  facts[1].counts = {4};
  EXPECT_NE(error_of<CommError>(facts).find("1 send counts given for a world of 2"), std::string::npos);
  facts = agreeing(2);
  facts[0].actual_ndim = 3;
  EXPECT_NE(error_of<ContractViolation>(facts).find("expected ndim 2, got ndim 3"), std::string::npos);
  facts = agreeing(2);
  facts[1].contiguous = 0;
  EXPECT_NE(error_of<ContractViolation>(facts).find("(rank 1, layer 2): expected contiguous"), std::string::npos);
}

TEST(WireHeader, DevicesPoliciesVersionsAndCorruptionAreChecked) {
  auto facts = agreeing(2);
  facts[1].expected_device = facts[1].actual_device = 1;  // cuda
  EXPECT_NE(error_of<CommError>(facts).find("rank 0 passes a cpu tensor, rank 1 a cuda tensor"), std::string::npos);
  facts = agreeing(2);
  facts[1].policy = static_cast<int64_t>(ContractPolicy::kCast);
  EXPECT_NE(error_of<CommError>(facts).find("rank 0 uses strict, rank 1 uses cast"), std::string::npos);

  auto all = gather(agreeing(2));
  all[header_length(2) + 1] = kContractVersion + 1;  // rank 1's version field
  try {
    verify_headers(all, 2);
    FAIL();
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("different trustep contract versions"), std::string::npos);
  }
  all = gather(agreeing(2));
  all[header_length(2)] = 12345;  // rank 1's magic
  EXPECT_THROW(verify_headers(all, 2), CommError);
}

TEST(WireHeader, ReductionsNeedEqualSizesAndArguments) {
  std::vector<HeaderFacts> facts(2);
  for (auto& f : facts) {
    f.op = CollectiveOp::kBroadcast;
    f.declared_dtype = f.actual_dtype = kFp32;
    f.rows = f.row_width = 10;
    f.arg = 1;
  }
  EXPECT_NO_THROW(verify_headers(gather(facts), 2));
  facts[1].rows = 11;
  EXPECT_NE(error_of<CommError>(facts).find("rank 0 passes 10 elements, rank 1 passes 11"), std::string::npos);
  facts[1].rows = 10;
  facts[1].arg = 0;
  EXPECT_NE(error_of<CommError>(facts).find("rank 0 passes root 1, rank 1 passes 0"), std::string::npos);
  facts[0].arg = facts[1].arg = 2;
  EXPECT_NE(error_of<CommError>(facts).find("root 2 is not a rank of this world of 2"), std::string::npos);
  for (auto& f : facts) f.op = CollectiveOp::kAllReduce;
  facts[0].arg = 0;
  facts[1].arg = 1;
  EXPECT_NE(error_of<CommError>(facts).find("rank 0 passes reduce op sum, rank 1 passes max"), std::string::npos);
}

TEST(WireHeader, SameInputGivesSameMessageWhoeverVerifies) {
  // verify_headers reads nothing but the gathered matrix: every rank raises the same text.
  auto facts = agreeing(4);
  facts[3].actual_dtype = kFp32;
  facts[1].row_width = 4;
  const std::string first = error_of<ContractViolation>(facts);
  EXPECT_EQ(first, error_of<ContractViolation>(facts));
  EXPECT_NE(first.find("rank 3"), std::string::npos) << first;  // contract checks precede width checks
}

}  // namespace
}  // namespace trustep::comm
