// Real multi-rank data movement: identity-encoded rows (every row says where it came from,
// where it goes and its index) under skewed, zero and empty counts, for each wire dtype.
#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "core/dtype.h"
#include "core/error.h"
#include "mpi_test_util.h"

#ifdef TRUSTEP_HAVE_CUDA
#include "comm/nccl_communicator.h"
#endif

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <gtest/gtest.h>

#include <functional>
#include <numeric>

namespace trustep {
namespace {

using testing::make_mpi_comm;

// Rows `src` sends to `dst`: skewed (rank 0 is hot), zero for some pairs, and the last rank
// sends nothing at all. Receivers recompute it independently of the exchanged counts.
int64_t pair_count(int src, int dst, int world) {
  if (world > 1 && src == world - 1) return 0;
  if ((src + 2 * dst) % 3 == 0) return 0;
  return 1 + (src * 37 + dst * 11) % 29 + (dst == 0 ? 40 : 0);
}

// Row layout: [src, dst, idx, checksum, filler...]; all values < 128, exact in bf16/fp16.
double cell(int src, int dst, int64_t idx, int64_t col) {
  switch (col) {
    case 0: return src;
    case 1: return dst;
    case 2: return static_cast<double>(idx);
    case 3: return static_cast<double>((src * 3 + dst * 5 + idx) % 128);
    default: return static_cast<double>((src + dst + idx + col) % 100);
  }
}

at::Tensor make_send(int rank, int world, int64_t width, c10::ScalarType dtype, std::vector<int64_t>& counts) {
  counts.assign(world, 0);
  for (int p = 0; p < world; ++p) counts[p] = pair_count(rank, p, world);
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  at::Tensor host = at::empty({rows, width}, at::kDouble);
  auto a = host.accessor<double, 2>();
  int64_t row = 0;
  for (int p = 0; p < world; ++p)
    for (int64_t i = 0; i < counts[p]; ++i, ++row)
      for (int64_t c = 0; c < width; ++c) a[row][c] = cell(rank, p, i, c);
  return host.to(dtype);
}

// Checks every received row against what its sender must have written.
void check_received(const comm::AllToAllResult& r, int rank, int world, int64_t width, c10::ScalarType dtype) {
  ASSERT_EQ(r.recv.scalar_type(), dtype);
  ASSERT_EQ(static_cast<int>(r.recv_counts.size()), world);
  for (int src = 0; src < world; ++src) ASSERT_EQ(r.recv_counts[src], pair_count(src, rank, world)) << "src " << src;
  const at::Tensor got = r.recv.cpu().to(at::kDouble);
  ASSERT_EQ(got.size(0), std::accumulate(r.recv_counts.begin(), r.recv_counts.end(), int64_t{0}));
  ASSERT_EQ(got.size(1), width);
  auto a = got.accessor<double, 2>();
  int64_t row = 0;
  for (int src = 0; src < world; ++src)
    for (int64_t i = 0; i < r.recv_counts[src]; ++i, ++row)
      for (int64_t c = 0; c < width; ++c)
        ASSERT_EQ(a[row][c], cell(src, rank, i, c)) << "row " << row << " col " << c << " from rank " << src;
}

class AllToAllV : public ::testing::TestWithParam<c10::ScalarType> {};

TEST_P(AllToAllV, IdentityRowsArriveIntactUnderSkewZerosAndASilentRank) {
  auto comm = make_mpi_comm();
  const c10::ScalarType dtype = GetParam();
  for (int64_t width : {int64_t{4}, int64_t{257}}) {
    std::vector<int64_t> counts;
    const at::Tensor send = make_send(comm->rank(), comm->size(), width, dtype, counts);
    const Contract contract{boundary::kDispatchSend, dtype, c10::DeviceType::CPU, 2, true};
    const auto result = comm->all_to_all_v(send, counts, contract, /*layer=*/0);
    check_received(result, comm->rank(), comm->size(), width, dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AllToAllV,
                         ::testing::Values(c10::ScalarType::Float, c10::ScalarType::Half, c10::ScalarType::BFloat16,
                                           c10::ScalarType::Long),
                         [](const auto& info) { return dtype_name(info.param); });

TEST(AllToAllVBuffer, ReusedReceiveBufferCarriesSuccessiveExchanges) {
  auto comm = make_mpi_comm();
  at::Tensor buffer;
  const Contract contract{boundary::kCombineSend, c10::ScalarType::Float, c10::DeviceType::CPU, 2, true};
  for (int round = 0; round < 3; ++round) {
    std::vector<int64_t> counts;
    const at::Tensor send = make_send(comm->rank(), comm->size(), 8, c10::ScalarType::Float, counts);
    const auto result = comm->all_to_all_v(send, counts, contract, -1, &buffer);
    check_received(result, comm->rank(), comm->size(), 8, c10::ScalarType::Float);
    EXPECT_EQ(result.recv.data_ptr(), buffer.data_ptr());
  }
}

TEST(AllToAllVEmpty, EveryRankSendingNothingIsNormal) {
  auto comm = make_mpi_comm();
  const Contract contract{boundary::kDispatchSend, c10::ScalarType::BFloat16, c10::DeviceType::CPU, 2, true};
  const auto result = comm->all_to_all_v(at::empty({0, 16}, at::kBFloat16),
                                         std::vector<int64_t>(comm->size(), 0), contract);
  EXPECT_EQ(result.recv.size(0), 0);
  EXPECT_EQ(result.recv_counts, std::vector<int64_t>(comm->size(), 0));
}

TEST(Collectives, AllReduceSumMaxMin) {
  auto comm = make_mpi_comm();
  const int r = comm->rank(), w = comm->size();
  for (auto dtype : {c10::ScalarType::Float, c10::ScalarType::Long, c10::ScalarType::BFloat16,
                     c10::ScalarType::Double}) {
    at::Tensor t = at::full({3, 5}, r + 1, at::TensorOptions().dtype(dtype));
    comm->all_reduce(t, comm::ReduceOp::kSum, "test.sum");
    EXPECT_TRUE(t.equal(at::full({3, 5}, w * (w + 1) / 2, at::TensorOptions().dtype(dtype)))) << dtype_name(dtype);
  }
  at::Tensor m = at::full({4}, r * 10.0, at::kFloat);
  comm->all_reduce(m, comm::ReduceOp::kMax, "test.max");
  EXPECT_TRUE(m.equal(at::full({4}, (w - 1) * 10.0, at::kFloat)));
  at::Tensor n = at::full({4}, r * 10 + 3, at::kLong);
  comm->all_reduce(n, comm::ReduceOp::kMin, "test.min");
  EXPECT_TRUE(n.equal(at::full({4}, 3, at::kLong)));
}

TEST(Collectives, AllGatherStacksRanksInOrder) {
  auto comm = make_mpi_comm();
  const at::Tensor mine = at::full({2, 3}, comm->rank() * 1.5, at::kFloat);
  const at::Tensor all = comm->all_gather(mine, "test.gather");
  ASSERT_EQ(all.sizes(), (c10::IntArrayRef{comm->size(), 2, 3}));
  for (int p = 0; p < comm->size(); ++p) EXPECT_TRUE(all[p].equal(at::full({2, 3}, p * 1.5, at::kFloat)));
  const at::Tensor strided = at::full({3, 2}, comm->rank(), at::kLong).t();  // gathered as a contiguous copy
  EXPECT_EQ(comm->all_gather(strided).sizes(), (c10::IntArrayRef{comm->size(), 2, 3}));
}

// A local failure becomes the same collective error on every rank; success stays silent.
TEST(Collectives, FailTogetherRaisesTheSameErrorEverywhere) {
  auto comm = make_mpi_comm();
  const int last = comm->size() - 1;
  comm->fail_together([] {}, "nothing fails");
  auto error_of = [&](const std::function<void()>& work) -> std::pair<std::string, bool> {
    try {
      comm->fail_together(work, "loading");
    } catch (const Error& e) {
      return {e.what(), e.collective()};
    }
    return {"no error", false};
  };
  const auto one = error_of([&] {
    if (comm->rank() == last) throw Error("disk on fire", TRUSTEP_ORIGIN);
  });
  EXPECT_TRUE(one.second);
  EXPECT_EQ(one.first, comm->size() == 1 ? "loading: disk on fire [on every rank]"
                                         : fmt::format("loading: failed on 1 of {} ranks: rank {}: disk on fire [raised "
                                                       "on every rank]",
                                                       comm->size(), last));
  const auto all = error_of([] { throw OptionError("bad shape", TRUSTEP_ORIGIN); });
  EXPECT_EQ(all.first, "loading: bad shape [on every rank]");
}

TEST(Collectives, BroadcastFromTheLastRank) {
  auto comm = make_mpi_comm();
  const int root = comm->size() - 1;
  at::Tensor t = at::full({7}, comm->rank() == root ? 42 : -1, at::kLong);
  comm->broadcast(t, root, "test.bcast");
  EXPECT_TRUE(t.equal(at::full({7}, 42, at::kLong)));
  comm->barrier("test.barrier");
}

TEST(NcclComm, IdentityRowsOnGpu) {
#ifndef TRUSTEP_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA/NCCL (see the CMake summary)";
#else
  if (!comm::cuda_device_visible()) GTEST_SKIP() << "no CUDA device visible on this machine";
  comm::CommOptions o;
  o.backend = comm::Backend::kNccl;
  o.timeout_s = 60;
  auto comm = comm::make_communicator(o);
  ASSERT_STREQ(comm->name(), "nccl");
  for (auto dtype : {c10::ScalarType::BFloat16, c10::ScalarType::Float}) {
    std::vector<int64_t> counts;
    const at::Tensor send = make_send(comm->rank(), comm->size(), 64, dtype, counts).cuda();
    const Contract contract{boundary::kDispatchSend, dtype, c10::DeviceType::CUDA, 2, true};
    const auto result = comm->all_to_all_v(send, counts, contract);
    EXPECT_TRUE(result.recv.is_cuda());
    check_received(result, comm->rank(), comm->size(), 64, dtype);
  }
  at::Tensor t = at::full({5}, comm->rank() + 1, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  comm->all_reduce(t);
  const int w = comm->size();
  EXPECT_TRUE(t.cpu().equal(at::full({5}, w * (w + 1) / 2, at::kFloat)));
#endif
}

}  // namespace
}  // namespace trustep
