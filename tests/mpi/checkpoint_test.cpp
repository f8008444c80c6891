// Sharded checkpoints across ranks: each rank saves its experts under global names; any
// process reads them back for any world size; a failure on one rank is the same error on every
// rank and leaves no new directory.
#include "core/error.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/unit/test_util.h"
#include "train/checkpoint.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace trustep::train {
namespace {

namespace fs = std::filesystem;
using testing::same_bits;
using testing::text_of;

constexpr int64_t kExperts = 8;  // divisible by 1, 2 and 4 ranks

// The same directory on every rank: rank 0's pid, broadcast with raw MPI.
std::string shared_root(const std::string& test) {
  int64_t pid = ::getpid();
  MPI_Bcast(&pid, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  return (fs::path(::testing::TempDir()) / ("checkpoint_mpi_" + std::to_string(pid) + "_" + test)).string();
}

// Expert e's weight: the same values whoever builds it; odd experts in bf16.
at::Tensor expert_weight(int64_t e) {
  const at::Tensor w = at::arange(12, at::kFloat).reshape({3, 4}).add(static_cast<double>(e) * 100.0).div(7.0);
  return e % 2 ? w.to(at::kBFloat16) : w;
}

std::vector<std::string> entries(const std::string& root) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// This rank's share of the experts, under global names.
CheckpointContents contents(const comm::Communicator& comm, int64_t step) {
  CheckpointContents c;
  c.step = step;
  c.meta = {{"experts", kExperts}, {"world", comm.size()}};
  c.replicated = {{"embed.weight", at::arange(20, at::kFloat).reshape({4, 5})},
                  {"step", at::arange(step, step + 1, at::kLong)}};
  const int64_t per_rank = kExperts / comm.size();
  for (int64_t e = comm.rank() * per_rank; e < (comm.rank() + 1) * per_rank; ++e)
    c.sharded["experts." + std::to_string(e) + ".w"] = expert_weight(e);
  return c;
}

class CheckpointMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    comm_ = testing::make_mpi_comm();
    root_ = shared_root(::testing::UnitTest::GetInstance()->current_test_info()->name());
    if (comm_->rank() == 0) fs::remove_all(root_);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (comm_->rank() == 0) fs::remove_all(root_);
  }

  // The message of the trustep::Error save_checkpoint throws, after asserting it is collective.
  std::string save_error(const CheckpointContents& c) {
    try {
      save_checkpoint(*comm_, root_, c);
    } catch (const Error& e) {
      EXPECT_TRUE(e.collective()) << e.what();
      return e.what();
    }
    return "no error";
  }

  std::unique_ptr<comm::Communicator> comm_;
  std::string root_;
};

TEST_F(CheckpointMpi, ShardsAreReadBackForAnyWorldSize) {
  CheckpointContents c = contents(*comm_, 100);
  c.rank0_files["notes.txt"] = [](const std::string& path) { std::ofstream(path) << "from rank 0\n"; };
  const std::string dir = save_checkpoint(*comm_, root_, c);
  EXPECT_TRUE(testing::same_on_every_rank(dir));
  const int W = comm_->size();

  const Checkpoint ck = Checkpoint::open(root_);
  EXPECT_EQ(ck.dir(), dir);
  EXPECT_EQ(ck.step(), 100);
  EXPECT_EQ(ck.world_size(), W);
  EXPECT_EQ(ck.meta(), c.meta);
  EXPECT_EQ(text_of(ck.file("notes.txt")), "from rank 0\n");
  int shards = 0;
  for (const CheckpointFile& f : ck.files())
    if (f.rank >= 0) {
      ++shards;
      EXPECT_EQ(f.name, fmt::format("shard-{:05d}-of-{:05d}.safetensors", f.rank, W));
    }
  EXPECT_EQ(shards, W);

  std::vector<std::string> all;
  for (int64_t e = 0; e < kExperts; ++e) all.push_back("experts." + std::to_string(e) + ".w");
  std::vector<std::string> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(ck.sharded_names(), sorted);

  const TensorMap everything = ck.load_sharded(all);
  ASSERT_EQ(everything.size(), static_cast<size_t>(kExperts));
  for (int64_t e = 0; e < kExperts; ++e) EXPECT_TRUE(same_bits(everything.at(all[e]), expert_weight(e))) << all[e];
  const TensorMap rep = ck.load_replicated();
  ASSERT_EQ(rep.size(), 2u);
  EXPECT_TRUE(same_bits(rep.at("embed.weight"), c.replicated.at("embed.weight")));

  // Resharding: rank r of a world of V loads experts [r·E/V, (r+1)·E/V), whatever W wrote them.
  for (int64_t V : {1, 2, 4, 8})
    for (int64_t r = 0; r < V; ++r) {
      std::vector<std::string> mine;
      for (int64_t e = r * kExperts / V; e < (r + 1) * kExperts / V; ++e) mine.push_back(all[e]);
      const TensorMap got = ck.load_sharded(mine);
      ASSERT_EQ(got.size(), mine.size());
      for (int64_t e = r * kExperts / V; e < (r + 1) * kExperts / V; ++e)
        EXPECT_TRUE(same_bits(got.at(all[e]), expert_weight(e))) << "V " << V << " rank " << r << " " << all[e];
    }
  EXPECT_EQ(text_of(root_ + "/latest"), "step-00000100\n");
}

TEST_F(CheckpointMpi, FailureOnOneRankIsTheSameErrorOnEveryRank) {
  save_checkpoint(*comm_, root_, contents(*comm_, 1));
  const int last = comm_->size() - 1;
  // Every rank looks before rank 0 starts the next save (which creates a temporary directory).
  const auto untouched = [&] {
    EXPECT_EQ(entries(root_), (std::vector<std::string>{"latest", "step-00000001"}));
    EXPECT_EQ(text_of(root_ + "/latest"), "step-00000001\n");
    MPI_Barrier(MPI_COMM_WORLD);
  };

  // Only the last rank holds a tensor the format cannot store: its shard write fails.
  CheckpointContents c = contents(*comm_, 2);
  if (comm_->rank() == last) c.sharded["experts.bad"] = at::randn({2}).to(at::kComplexFloat);
  std::string e = save_error(c);
  EXPECT_TRUE(testing::same_on_every_rank(e)) << e;
  EXPECT_NE(e.find(fmt::format("failed on 1 of {} rank(s): rank {}: safetensors '", comm_->size(), last)),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(fmt::format(".tmp-step-00000002/shard-{:05d}-of-{:05d}.safetensors'", last, comm_->size())),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("'experts.bad'"), std::string::npos) << e;
  EXPECT_NE(e.find("are unchanged [raised on every rank]"), std::string::npos) << e;
  untouched();

  // Only rank 0 fails: an extra file's writer throws.
  c = contents(*comm_, 2);
  c.rank0_files["routing.safetensors"] = [](const std::string&) { throw std::runtime_error("no space left"); };
  e = save_error(c);
  EXPECT_TRUE(testing::same_on_every_rank(e)) << e;
  EXPECT_NE(e.find("rank 0: the writer of '"), std::string::npos) << e;
  EXPECT_NE(e.find("routing.safetensors' failed: no space left"), std::string::npos) << e;
  untouched();

  if (comm_->size() > 1) {
    // Every rank saves the same "global" name.
    c = contents(*comm_, 2);
    c.sharded["experts.dup"] = expert_weight(0);
    e = save_error(c);
    EXPECT_TRUE(testing::same_on_every_rank(e)) << e;
    EXPECT_NE(e.find("sharded tensor 'experts.dup' is saved by rank 0 and by rank 1"), std::string::npos) << e;
    untouched();

    // Ranks disagree on the step.
    e = save_error(contents(*comm_, 3 + comm_->rank()));
    EXPECT_TRUE(testing::same_on_every_rank(e)) << e;
    EXPECT_NE(e.find("ranks disagree on the step: rank 0 saves 3, rank 1 saves 4"), std::string::npos) << e;
    untouched();
  }
  EXPECT_EQ(Checkpoint::open(root_).step(), 1);
}

}  // namespace
}  // namespace trustep::train
