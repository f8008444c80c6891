// safetensors reader/writer: bit-exact round trips of every dtype, metadata, selective loads,
// and one hand-written corrupt file per error the reader promises to name.
#include "core/error.h"
#include "core/safetensors.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

namespace trustep {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("safetensors_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a file by hand: 8-byte length (`length` overrides it), header text, data bytes.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                        std::optional<uint64_t> length = std::nullopt) const {
    const std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = length.value_or(header.size());
    out.write(reinterpret_cast<const char*>(&n), sizeof n);
    out << header << data;
    return p;
  }

  // The message of the trustep::Error that loading `p` raises.
  static std::string load_error(const std::string& p) {
    try {
      load_safetensors(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  }

  static std::string file_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  fs::path dir_;
};

// Random bytes reinterpreted as `dtype`: every bit pattern (NaNs, subnormals) must survive.
at::Tensor random_bits(c10::ScalarType dtype, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const int64_t item = static_cast<int64_t>(c10::elementSize(dtype));
  at::Tensor bytes = at::randint(0, dtype == c10::ScalarType::Bool ? 2 : 256, {numel * item}, at::kByte);
  return bytes.view(dtype).view(shape);
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         a.contiguous().reshape(-1).view(at::kByte).equal(b.contiguous().reshape(-1).view(at::kByte));
}

TEST_F(Safetensors, RoundTripsEveryDtypeBitExact) {
  const std::vector<c10::ScalarType> dtypes{
      c10::ScalarType::Float, c10::ScalarType::Half, c10::ScalarType::BFloat16,      c10::ScalarType::Double,
      c10::ScalarType::Long,  c10::ScalarType::Int,  c10::ScalarType::Byte,          c10::ScalarType::Char,
      c10::ScalarType::Bool,  c10::ScalarType::Float8_e4m3fn, c10::ScalarType::Float8_e5m2};
  TensorMap tensors;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const std::string name = "t" + std::to_string(i) + "." + c10::toString(dtypes[i]);
    tensors[name] = random_bits(dtypes[i], {3, static_cast<int64_t>(i) + 1, 5});
    tensors[name + ".scalar"] = random_bits(dtypes[i], {});
    tensors[name + ".empty"] = random_bits(dtypes[i], {0, 4});
  }
  const std::string p = path("all.safetensors");
  save_safetensors(p, tensors);
  const SafetensorsFile file = load_safetensors(p);
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(file.tensors.count(name)) << name;
    EXPECT_TRUE(same_bytes(file.tensors.at(name), t)) << name;
    EXPECT_TRUE(file.tensors.at(name).is_contiguous()) << name;
  }
  EXPECT_TRUE(file.metadata.empty());
}

TEST_F(Safetensors, HeaderIsPaddedAndTensorsAreAligned) {
  const TensorMap tensors{{"a", at::arange(3, at::kByte)}, {"b", at::randn({5}, at::kDouble)},
                          {"c", at::randn({2}, at::kHalf)}};
  const std::string p = path("aligned.safetensors");
  save_safetensors(p, tensors, {{"format", "pt"}});
  const std::string bytes = file_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.size(), 8 + n + 3 + 5 * 8 + 2 * 2);
  // Widest first: the fp64 tensor starts the data section, so it is 8-byte aligned.
  const std::string header = bytes.substr(8, n);
  EXPECT_NE(header.find(R"("b":{"data_offsets":[0,40])"), std::string::npos) << header;
  EXPECT_EQ(header.substr(header.rfind('}') + 1).find_first_not_of(' '), std::string::npos) << header;
}

TEST_F(Safetensors, NonContiguousInputIsWrittenInLogicalOrder) {
  const at::Tensor base = at::arange(12, at::kFloat).view({3, 4});  // [3, 4]
  const at::Tensor t = base.t();                                      // [4, 3], non-contiguous
  ASSERT_FALSE(t.is_contiguous());
  const std::string p = path("transposed.safetensors");
  save_safetensors(p, {{"t", t}});
  EXPECT_TRUE(load_safetensors(p).tensors.at("t").equal(t));
}

TEST_F(Safetensors, MetadataRoundTrips) {
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"run", "ctx-8 \"quoted\" ünïcode"}, {"empty", ""}};
  const std::string p = path("meta.safetensors");
  save_safetensors(p, {{"x", at::ones({2})}}, meta);
  EXPECT_EQ(load_safetensors(p).metadata, meta);
}

TEST_F(Safetensors, SelectiveLoadReadsOnlyWantedTensors) {
  TensorMap tensors;
  for (int e = 0; e < 4; ++e) tensors["expert." + std::to_string(e) + ".w"] = at::randn({4, 3});
  tensors["flag"] = at::ones({8}, at::kBool);
  const std::string p = path("experts.safetensors");
  save_safetensors(p, tensors);
  const auto mine = [](const std::string& name) { return name == "expert.1.w" || name == "expert.3.w"; };
  const SafetensorsFile file = load_safetensors(p, mine);
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_TRUE(file.tensors.at("expert.1.w").equal(tensors.at("expert.1.w")));
  EXPECT_TRUE(file.tensors.at("expert.3.w").equal(tensors.at("expert.3.w")));

  // Corrupt the bool bytes (value 2): a load that skips "flag" never reads them, a full load
  // refuses them.
  std::string bytes = file_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const size_t flag_at = bytes.size() - 8;  // bool is the narrowest dtype, so it is written last
  bytes[flag_at + 3] = 2;
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_EQ(load_safetensors(p, mine).tensors.size(), 2u);
  const std::string e = load_error(p);
  EXPECT_NE(e.find("tensor 'flag': BOOL data holds bytes other than 0 and 1"), std::string::npos) << e;
}

TEST_F(Safetensors, ReadsAnUnpaddedFileFromAnotherWriter) {
  // Two fp32 values (1.0, -2.5) and one int64 (7), offsets in the order the header lists them.
  std::string data(16, '\0');
  const float f[2] = {1.0f, -2.5f};
  const int64_t i = 7;
  std::memcpy(data.data(), f, 8);
  std::memcpy(data.data() + 8, &i, 8);
  const std::string p = write_raw("other.safetensors",
                                  R"({"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},)"
                                  R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                  data);
  const SafetensorsFile file = load_safetensors(p);
  EXPECT_FLOAT_EQ(file.tensors.at("a")[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(file.tensors.at("a")[1].item<float>(), -2.5f);
  EXPECT_EQ(file.tensors.at("b")[0].item<int64_t>(), 7);
}

TEST_F(Safetensors, SaveIsAtomicAndLeavesNoTemporaryFile) {
  const std::string p = path("atomic.safetensors");
  save_safetensors(p, {{"x", at::randn({3})}});
  const std::string before = file_bytes(p);
  // An unsupported dtype is refused before anything is written: the old file stays intact.
  try {
    save_safetensors(p, {{"z", at::randn({2}, at::kComplexFloat)}, {"x", at::randn({3})}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'z' has dtype"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  EXPECT_EQ(file_bytes(p), before);
  // A directory that does not exist: the error names the file.
  EXPECT_THROW(save_safetensors(path("no/such/dir/x.safetensors"), {{"x", at::randn({1})}}), Error);
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
  // Overwriting replaces the contents.
  save_safetensors(p, {{"y", at::arange(4, at::kInt)}});
  EXPECT_EQ(load_safetensors(p).tensors.count("y"), 1u);
  EXPECT_EQ(load_safetensors(p).tensors.count("x"), 0u);
}

TEST_F(Safetensors, RefusesInvalidTensorNames) {
  EXPECT_THROW(save_safetensors(path("x"), {{"__metadata__", at::randn({1})}}), Error);
  EXPECT_THROW(save_safetensors(path("x"), {{"", at::randn({1})}}), Error);
  EXPECT_THROW(save_safetensors(path("x"), {{"u", at::Tensor()}}), Error);
}

// Each corrupt file gives an error naming the file and what is wrong.
struct Corruption {
  const char* name;
  std::string header;
  std::string data;
  std::optional<uint64_t> length;
  const char* expect;
};

TEST_F(Safetensors, EachCorruptionIsNamed) {
  const std::string f32x2 = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<Corruption> cases{
      {"header_length_past_end", f32x2, std::string(8, '\0'), 1000,
       "file truncated: header length 1000 but only"},
      {"header_too_large", "{}", "", 200'000'000, "header length 200000000 exceeds 100000000 bytes"},
      {"data_truncated", f32x2, std::string(5, '\0'), std::nullopt,
       "tensor 'w': data_offsets [0, 8] reach past the data section (5 bytes)"},
      {"bad_json", R"({"w":{"dtype":"F32",)", "", std::nullopt, "bad JSON header"},
      // found by tests/fuzz: nlohmann throws out_of_range, not parse_error, for this one
      {"number_overflow", R"({"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", std::string(4, '\0'),
       std::nullopt, "bad JSON header: [json.exception.out_of_range.406] number overflow"},
      {"not_an_object", "[1, 2]", "", std::nullopt, "header must be a JSON object, got array"},
      {"unknown_dtype", R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", std::string(1, '\0'),
       std::nullopt, "tensor 'w': unknown dtype 'F4'"},
      {"offsets_out_of_range", R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[60,64]}})", std::string(8, '\0'),
       std::nullopt, "tensor 'w': data_offsets [60, 64] reach past the data section (8 bytes)"},
      {"begin_after_end", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", std::string(4, '\0'),
       std::nullopt, "tensor 'w': data_offsets [4, 0] begin after end"},
      {"overlap",
       R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
       std::string(8, '\0'), std::nullopt, "tensor 'b': data_offsets [4, 8] overlap tensor 'a' [0, 6]"},
      {"gap",
       R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
       std::string(8, '\0'), std::nullopt, "tensor 'b': data_offsets [4, 8] leave a gap of 2 bytes after offset 2"},
      {"trailing_bytes", f32x2, std::string(12, '\0'), std::nullopt, "4 bytes after the last tensor"},
      {"size_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'),
       std::nullopt, "tensor 'w': F32 with shape [3] needs 12 bytes but data_offsets [0, 8] hold 8"},
      {"negative_dim", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'),
       std::nullopt, "tensor 'w': shape must hold non-negative integers, got -2"},
      {"missing_field", R"({"w":{"dtype":"F32","shape":[2]}})", "", std::nullopt,
       "tensor 'w': header entry has no \"data_offsets\""},
      {"duplicate", f32x2.substr(0, f32x2.size() - 1) + R"(,"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
       std::string(8, '\0'), std::nullopt, "tensor 'w' appears twice in the header"},
      {"metadata_not_string", R"({"__metadata__":{"step":3}})", "", std::nullopt,
       "__metadata__ value of 'step' must be a string, got 3"},
      {"huge_shape", R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
       std::string(8, '\0'), std::nullopt, "tensor 'w': shape [4294967296,4294967296] overflows"},
      // no elements, but LibTorch's strides would overflow (c10::Error before the fix)
      {"huge_empty_shape", R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", "",
       std::nullopt, "tensor 'w': shape [0,4611686018427387904,4] overflows"},
  };
  for (const Corruption& c : cases) {
    const std::string p = write_raw(std::string(c.name) + ".safetensors", c.header, c.data, c.length);
    const std::string e = load_error(p);
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(p), std::string::npos) << c.name << ": " << e;
  }
}

TEST_F(Safetensors, TooShortAndMissingFilesAreNamed) {
  const std::string p = path("short.safetensors");
  std::ofstream(p, std::ios::binary) << "abc";
  EXPECT_NE(load_error(p).find("file truncated: 3 bytes, shorter than the 8-byte header length"), std::string::npos)
      << load_error(p);
  EXPECT_NE(load_error(path("absent.safetensors")).find("absent.safetensors': cannot open"), std::string::npos);
}

}  // namespace
}  // namespace trustep
