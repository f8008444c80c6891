// Expert bank: forward and gradients against a per-row reference built from plain ops,
// empty experts, initialisation that ignores the world layout, HF-style weight I/O that
// reads only the rank's own experts, and errors that name what is wrong.
#include "core/error.h"
#include "core/safetensors.h"
#include "experts/expert_bank.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

namespace trustep::experts {
namespace {

using trustep::testing::error_of;

namespace fs = std::filesystem;

constexpr int64_t kH = 8, kF = 12, kE = 4;

ExpertBankConfig bank_config(int64_t first, int64_t local, c10::ScalarType dtype = at::kFloat,
                             uint64_t seed = 7) {
  ExpertBankConfig c;
  c.hidden = kH;
  c.ffn = kF;
  c.num_experts = kE;
  c.first_expert = first;
  c.local_experts = local;
  c.dtype = dtype;
  c.seed = seed;
  return c;
}

// Per-row reference: row r goes through the local expert that owns it, with silu written out
// (g · sigmoid(g)) and matrix-vector products only. Works for any dtype and under autograd.
at::Tensor reference(const at::Tensor& x, const std::vector<int64_t>& counts, const at::Tensor& gate,
                     const at::Tensor& up, const at::Tensor& down) {
  std::vector<at::Tensor> rows;
  int64_t r = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    for (int64_t k = 0; k < counts[i]; ++k, ++r) {
      const at::Tensor xr = x[r];                // [H]
      const at::Tensor g = gate[i].matmul(xr);   // [F]
      const at::Tensor u = up[i].matmul(xr);     // [F]
      rows.push_back(down[i].matmul(g * at::sigmoid(g) * u));  // [H]
    }
  }
  return at::stack(rows, 0);  // [N, H]
}

TEST(ExpertBank, ForwardMatchesPerRowReferenceFp32) {
  ExpertBankImpl bank(bank_config(0, 4));
  EXPECT_EQ(bank.gate.sizes(), (c10::IntArrayRef{4, kF, kH}));
  EXPECT_EQ(bank.up.sizes(), (c10::IntArrayRef{4, kF, kH}));
  EXPECT_EQ(bank.down.sizes(), (c10::IntArrayRef{4, kH, kF}));
  const std::vector<int64_t> counts{3, 0, 5, 2};
  const at::Tensor x = at::randn({10, kH}, at::kFloat);
  const at::Tensor y = bank.forward(x, counts);
  ASSERT_EQ(y.sizes(), (c10::IntArrayRef{10, kH}));
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  const at::Tensor ref = reference(x.to(at::kDouble), counts, bank.gate.detach().to(at::kDouble),
                                   bank.up.detach().to(at::kDouble), bank.down.detach().to(at::kDouble));
  EXPECT_TRUE(at::allclose(y.to(at::kDouble), ref, 1e-5, 1e-6)) << (y.to(at::kDouble) - ref).abs().max();
}

TEST(ExpertBank, ForwardMatchesPerRowReferenceBf16) {
  ExpertBankImpl bank(bank_config(0, 4, at::kBFloat16));
  EXPECT_EQ(bank.gate.scalar_type(), at::kBFloat16);
  const std::vector<int64_t> counts{2, 4, 0, 3};
  const at::Tensor x = at::randn({9, kH}, at::kFloat).to(at::kBFloat16);
  const at::Tensor y = bank.forward(x, counts);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  // The same bf16 weights and inputs, computed exactly: the bank differs only by bf16 roundings.
  const at::Tensor ref = reference(x.to(at::kDouble), counts, bank.gate.detach().to(at::kDouble),
                                   bank.up.detach().to(at::kDouble), bank.down.detach().to(at::kDouble));
  EXPECT_TRUE(at::allclose(y.to(at::kDouble), ref, 3e-2, 1e-2)) << (y.to(at::kDouble) - ref).abs().max();
  // And it equals the fp32 bank holding those same bf16 weights, to bf16 precision.
  ExpertBankImpl fp32(bank_config(0, 4));
  EXPECT_TRUE(at::allclose(fp32.gate, bank.gate.to(at::kFloat), 1e-2, 1e-2));  // same init, cast
}

TEST(ExpertBank, EmptyExpertsCostNothingAndAllRowsToOneExpertWork) {
  ExpertBankImpl bank(bank_config(0, 4));
  const at::Tensor x = at::randn({6, kH}, at::kFloat);
  for (const std::vector<int64_t>& counts :
       {std::vector<int64_t>{6, 0, 0, 0}, {0, 0, 0, 6}, {0, 6, 0, 0}, {0, 3, 0, 3}}) {
    const at::Tensor y = bank.forward(x, counts);
    const at::Tensor ref = reference(x, counts, bank.gate.detach(), bank.up.detach(), bank.down.detach());
    EXPECT_TRUE(at::allclose(y, ref, 1e-5, 1e-6)) << counts[0] << counts[1] << counts[2] << counts[3];
  }
}

TEST(ExpertBank, NoRowsGivesEmptyOutputStillInTheGraph) {
  ExpertBankImpl bank(bank_config(0, 4));
  const at::Tensor x = at::zeros({0, kH}, at::kFloat).requires_grad_(true);
  const at::Tensor y = bank.forward(x, {0, 0, 0, 0});
  EXPECT_EQ(y.sizes(), (c10::IntArrayRef{0, kH}));
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  // A backward exchange behind the bank must still run on a rank that received nothing.
  EXPECT_TRUE(y.requires_grad());
  y.sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().sizes(), (c10::IntArrayRef{0, kH}));
}

TEST(ExpertBank, GradientsMatchAutogradThroughThePerRowReference) {
  ExpertBankImpl bank(bank_config(0, 4));
  const std::vector<int64_t> counts{2, 0, 4, 1};
  const at::Tensor x0 = at::randn({7, kH}, at::kFloat);
  const at::Tensor w = at::randn({7, kH}, at::kFloat);  // a non-uniform upstream gradient

  const at::Tensor x = x0.clone().requires_grad_(true);
  (bank.forward(x, counts) * w).sum().backward();

  const at::Tensor rx = x0.to(at::kDouble).requires_grad_(true);
  const at::Tensor rg = bank.gate.detach().to(at::kDouble).requires_grad_(true);
  const at::Tensor ru = bank.up.detach().to(at::kDouble).requires_grad_(true);
  const at::Tensor rd = bank.down.detach().to(at::kDouble).requires_grad_(true);
  (reference(rx, counts, rg, ru, rd) * w.to(at::kDouble)).sum().backward();

  auto close = [](const at::Tensor& got, const at::Tensor& want) {
    return got.defined() && at::allclose(got.to(at::kDouble), want, 1e-4, 1e-5);
  };
  EXPECT_TRUE(close(x.grad(), rx.grad()));
  EXPECT_TRUE(close(bank.gate.grad(), rg.grad()));
  EXPECT_TRUE(close(bank.up.grad(), ru.grad()));
  EXPECT_TRUE(close(bank.down.grad(), rd.grad()));
  // The expert that saw no rows gets exactly zero gradient; the others do not.
  EXPECT_EQ(bank.gate.grad()[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(bank.down.grad()[1].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(bank.gate.grad()[3].abs().sum().item<float>(), 0.0f);
}

TEST(ExpertBank, Bf16GradientsReachXAndWeights) {
  ExpertBankImpl bank(bank_config(0, 2, at::kBFloat16));
  const at::Tensor x = at::randn({5, kH}, at::kFloat).to(at::kBFloat16).requires_grad_(true);
  bank.forward(x, {3, 2}).sum().backward();
  ASSERT_TRUE(x.grad().defined() && bank.gate.grad().defined() && bank.down.grad().defined());
  EXPECT_EQ(x.grad().scalar_type(), at::kBFloat16);
  EXPECT_EQ(bank.up.grad().scalar_type(), at::kBFloat16);
  EXPECT_GT(bank.up.grad().abs().sum().item<float>(), 0.0f);
}

TEST(ExpertBank, InitialisationDependsOnlyOnSeedAndGlobalExpert) {
  ExpertBankImpl whole(bank_config(0, 4));
  for (auto [first, local] : {std::pair<int64_t, int64_t>{2, 2}, {0, 2}, {1, 1}, {3, 1}}) {
    ExpertBankImpl part(bank_config(first, local));
    EXPECT_TRUE(at::equal(part.gate, whole.gate.narrow(0, first, local))) << first;
    EXPECT_TRUE(at::equal(part.up, whole.up.narrow(0, first, local))) << first;
    EXPECT_TRUE(at::equal(part.down, whole.down.narrow(0, first, local))) << first;
  }
  // bf16 is the fp32 draw, cast.
  ExpertBankImpl bf16(bank_config(2, 2, at::kBFloat16));
  EXPECT_TRUE(at::equal(bf16.up, whole.up.narrow(0, 2, 2).to(at::kBFloat16)));
  // Distinct experts and distinct seeds give distinct weights, within the fan-in bounds.
  EXPECT_FALSE(at::equal(whole.gate[0], whole.gate[1]));
  EXPECT_FALSE(at::equal(whole.gate[0], whole.up[0]));
  ExpertBankImpl other_seed(bank_config(0, 4, at::kFloat, 8));
  EXPECT_FALSE(at::equal(whole.gate, other_seed.gate));
  EXPECT_LE(whole.gate.abs().max().item<double>(), 1.0 / std::sqrt(double(kH)));
  EXPECT_LE(whole.down.abs().max().item<double>(), 1.0 / std::sqrt(double(kF)));
  EXPECT_GT(whole.down.abs().max().item<double>(), 0.5 / std::sqrt(double(kF)));
}

TEST(ExpertBank, ModuleHolderParametersAndMemory) {
  ExpertBank bank(bank_config(1, 2));
  const auto params = bank->named_parameters();
  ASSERT_EQ(params.size(), 3u);
  EXPECT_TRUE(params.contains("gate") && params.contains("up") && params.contains("down"));
  int64_t numel = 0;
  for (const auto& p : bank->parameters()) numel += p.numel();
  EXPECT_EQ(numel, 3 * kF * kH * 2);  // 3·F·H·local_experts
  EXPECT_EQ(bank->forward(at::randn({3, kH}, at::kFloat), {1, 2}).sizes(), (c10::IntArrayRef{3, kH}));
}

class ExpertBankFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("expert_bank_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file with all four experts of `whole`, then `edit` applied to the tensor map.
  std::string write_all(const std::string& name, const std::function<void(TensorMap&)>& edit = {}) {
    ExpertBankImpl whole(bank_config(0, kE, at::kFloat, 99));
    const std::string p = path(name);
    save_hf(whole, p, kPrefix);
    if (edit) {
      TensorMap t = load_safetensors(p).tensors;
      edit(t);
      save_safetensors(p, t);
    }
    return p;
  }

  static constexpr const char* kPrefix = "model.layers.3.mlp.";
  fs::path dir_;
};

TEST_F(ExpertBankFiles, SaveThenLoadRoundTripsExactly) {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    ExpertBankImpl saved(bank_config(2, 2, dtype, 1));
    const std::string p = path("bank.safetensors");
    save_hf(saved, p, kPrefix);
    const TensorMap t = load_safetensors(p).tensors;
    ASSERT_EQ(t.size(), 6u);  // only the local experts are written
    const at::Tensor g3 = t.at("model.layers.3.mlp.experts.3.gate_proj.weight");
    EXPECT_EQ(g3.sizes(), (c10::IntArrayRef{kF, kH}));
    EXPECT_EQ(g3.scalar_type(), dtype);
    EXPECT_EQ(t.at("model.layers.3.mlp.experts.2.down_proj.weight").sizes(), (c10::IntArrayRef{kH, kF}));

    ExpertBankImpl loaded(bank_config(2, 2, dtype, 2));
    ASSERT_FALSE(at::equal(loaded.gate, saved.gate));
    loaded.load_hf(p, kPrefix);
    EXPECT_TRUE(at::equal(loaded.gate, saved.gate));
    EXPECT_TRUE(at::equal(loaded.up, saved.up));
    EXPECT_TRUE(at::equal(loaded.down, saved.down));
    EXPECT_TRUE(loaded.gate.requires_grad());
  }
}

TEST_F(ExpertBankFiles, LoadCastsToTheBankDtypeAndPicksItsOwnExperts) {
  const std::string p = write_all("all.safetensors");
  ExpertBankImpl whole(bank_config(0, kE, at::kFloat, 99));
  ExpertBankImpl part(bank_config(1, 2, at::kBFloat16, 5));
  part.load_hf(p, kPrefix);
  EXPECT_TRUE(at::equal(part.down, whole.down.narrow(0, 1, 2).to(at::kBFloat16)));
  EXPECT_TRUE(at::equal(part.gate, whole.gate.narrow(0, 1, 2).to(at::kBFloat16)));
}

TEST_F(ExpertBankFiles, OtherRanksBrokenExpertsAreNeverRead) {
  // Expert 2's up_proj is all NaN and expert 3's gate_proj has the wrong shape.
  const std::string p = write_all("broken.safetensors", [](TensorMap& t) {
    t["model.layers.3.mlp.experts.2.up_proj.weight"] =
        at::full({kF, kH}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
    t["model.layers.3.mlp.experts.3.gate_proj.weight"] = at::randn({3, 5}, at::kFloat);
  });
  ExpertBankImpl whole(bank_config(0, kE, at::kFloat, 99));
  ExpertBankImpl rank0(bank_config(0, 2, at::kFloat, 5));
  EXPECT_NO_THROW(rank0.load_hf(p, kPrefix));
  EXPECT_TRUE(at::equal(rank0.gate, whole.gate.narrow(0, 0, 2)));

  ExpertBankImpl owner3(bank_config(3, 1, at::kFloat, 5));
  const at::Tensor before = owner3.up.clone();
  const std::string shape_err = error_of([&] { owner3.load_hf(p, kPrefix); });
  EXPECT_NE(shape_err.find(p), std::string::npos) << shape_err;
  EXPECT_NE(shape_err.find("tensor 'model.layers.3.mlp.experts.3.gate_proj.weight' has shape [3, 5], "
                           "expected [12, 8]"),
            std::string::npos)
      << shape_err;
  EXPECT_TRUE(at::equal(owner3.up, before));  // a failed load changes nothing

  ExpertBankImpl owner2(bank_config(2, 1, at::kFloat, 5));
  const std::string nan_err = error_of([&] { owner2.load_hf(p, kPrefix); });
  EXPECT_NE(nan_err.find("tensor 'model.layers.3.mlp.experts.2.up_proj.weight' contains NaN or Inf"),
            std::string::npos)
      << nan_err;
}

TEST_F(ExpertBankFiles, OtherExpertsBytesAreNotEvenRead) {
  // Expert 3's gate_proj becomes a BOOL tensor holding the byte 2: the header is valid, but
  // the reader rejects those bytes whenever it reads them.
  const std::string name = "model.layers.3.mlp.experts.3.gate_proj.weight";
  const std::string p = write_all("bad_bytes.safetensors", [&](TensorMap& t) {
    t[name] = at::zeros({kF, kH}, at::kBool);
  });
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t n = 0;
    f.read(reinterpret_cast<char*>(&n), sizeof n);
    std::string header(n, '\0');
    f.read(header.data(), static_cast<std::streamsize>(n));
    const auto begin = nlohmann::json::parse(header).at(name).at("data_offsets").at(0).get<uint64_t>();
    f.seekp(static_cast<std::streamoff>(8 + n + begin));
    f.put('\x02');
  }
  EXPECT_THROW(load_safetensors(p), Error);  // reading everything would fail
  ExpertBankImpl rank0(bank_config(0, 3, at::kFloat, 5));
  EXPECT_NO_THROW(rank0.load_hf(p, kPrefix));
  ExpertBankImpl owner3(bank_config(3, 1, at::kFloat, 5));
  const std::string err = error_of([&] { owner3.load_hf(p, kPrefix); });
  EXPECT_NE(err.find(name), std::string::npos) << err;
}

TEST_F(ExpertBankFiles, MissingTensorWrongPrefixAndMissingFileAreNamed) {
  const std::string p = write_all("missing.safetensors", [](TensorMap& t) {
    t.erase("model.layers.3.mlp.experts.1.down_proj.weight");
  });
  ExpertBankImpl rank1(bank_config(1, 1));
  const std::string err = error_of([&] { rank1.load_hf(p, kPrefix); });
  EXPECT_NE(err.find(p + ": missing tensor 'model.layers.3.mlp.experts.1.down_proj.weight' (expected [8, 12]"),
            std::string::npos)
      << err;
  ExpertBankImpl rank2(bank_config(2, 1));
  EXPECT_NO_THROW(rank2.load_hf(p, kPrefix));
  const std::string prefix_err = error_of([&] { rank2.load_hf(p, "model.layers.4.mlp."); });
  EXPECT_NE(prefix_err.find("missing tensor 'model.layers.4.mlp.experts.2.gate_proj.weight'"), std::string::npos)
      << prefix_err;
  const std::string file_err = error_of([&] { rank2.load_hf(path("nope.safetensors"), kPrefix); });
  EXPECT_NE(file_err.find("nope.safetensors"), std::string::npos) << file_err;
}

TEST_F(ExpertBankFiles, NonFloatTensorIsRefused) {
  const std::string p = write_all("ints.safetensors", [](TensorMap& t) {
    t["model.layers.3.mlp.experts.0.gate_proj.weight"] = at::zeros({kF, kH}, at::kLong);
  });
  ExpertBankImpl rank0(bank_config(0, 1));
  const std::string err = error_of([&] { rank0.load_hf(p, kPrefix); });
  EXPECT_NE(err.find("'model.layers.3.mlp.experts.0.gate_proj.weight' is int64, expected a floating-point"),
            std::string::npos)
      << err;
}

TEST(ExpertBank, ForwardErrorsNameTheBadArgument) {
  ExpertBankImpl bank(bank_config(0, 2));
  const at::Tensor x = at::randn({4, kH}, at::kFloat);
  EXPECT_NE(error_of([&] { bank.forward(x, {4}); }).find("counts must have one entry per local expert (2), got 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { bank.forward(x, {1, 2}); }).find("counts sum to 3 but x has 4 rows (counts [1, 2])"),
            std::string::npos);
  EXPECT_NE(error_of([&] { bank.forward(x, {5, -1}); }).find("counts[1] = -1 is negative"), std::string::npos);
  EXPECT_NE(error_of([&] { bank.forward(at::randn({4, kH + 1}, at::kFloat), {2, 2}); })
                .find("x must be [N, 8], got [4, 9]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { bank.forward(at::randn({kH}, at::kFloat), {0, 0}); }).find("x must be [N, 8], got [8]"),
            std::string::npos);
  try {
    bank.forward(x.to(at::kBFloat16), {2, 2});
    FAIL() << "expected a contract violation";
  } catch (const ContractViolation& e) {
    EXPECT_EQ(e.boundary(), "expert.in");
    EXPECT_EQ(e.expected(), "fp32");
    EXPECT_EQ(e.actual(), "bf16");
  }
}

TEST(ExpertBank, ValidateNamesTheOption) {
  auto message = [](const std::function<void(ExpertBankConfig&)>& edit) -> std::string {
    ExpertBankConfig c = bank_config(0, 4);
    edit(c);
    try {
      c.validate();
    } catch (const OptionError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message([](ExpertBankConfig&) {}), "no error");
  EXPECT_NE(message([](ExpertBankConfig& c) { c.hidden = 0; }).find("'--hidden'"), std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.ffn = -3; }).find("invalid value '-3' for option '--ffn'"),
            std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.num_experts = 0; }).find("'--experts'"), std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.dtype = at::kHalf; }).find("'fp16' for option '--dtype'"),
            std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.first_expert = 2; }).find("local experts [2, 6)"),
            std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.local_experts = 0; }).find("local_experts 0"), std::string::npos);
  EXPECT_NE(message([](ExpertBankConfig& c) { c.first_expert = -1; }).find("first_expert -1"), std::string::npos);
  // The constructor validates too.
  ExpertBankConfig bad = bank_config(3, 2);
  EXPECT_THROW(ExpertBankImpl{bad}, OptionError);
}

}  // namespace
}  // namespace trustep::experts
