#include "train/data.h"

#include "core/error.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace trustep::train {

namespace {

constexpr int kMaxOperand = 8;  // longest operand (letters or brackets)
constexpr int kMinOperand = 2;
constexpr int kOverhead = 7;    // <bos> "tag:" '=' <eos>
constexpr int kAddLength = 14;  // <bos> "add:" dd '+' dd '=' dd <eos>

// SplitMix64 finaliser: decorrelates (seed, step, row) before seeding a row's stream.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// One explicit stream per (source kind, seed, step, row): no state survives between calls.
std::mt19937_64 row_stream(uint64_t kind, uint64_t seed, int64_t step, int64_t row) {
  uint64_t h = mix(kind);
  h = mix(h ^ seed);
  h = mix(h ^ static_cast<uint64_t>(step));
  h = mix(h ^ static_cast<uint64_t>(row));
  return std::mt19937_64(h);
}

// Uniform in [0, n). Plain modulo (bias < 2^-58) instead of std::uniform_int_distribution,
// whose output differs between standard libraries.
int64_t draw(std::mt19937_64& rng, int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); }

constexpr std::string_view kTags[kSyntheticContexts] = {"cpy", "rev", "srt", "add", "brk", "rot"};
constexpr std::string_view kLetters = "abcdefgh";
constexpr std::string_view kOpen = "([{";
constexpr std::string_view kClose = ")]}";

std::string answer_of(int64_t family, std::string_view operand) {
  std::string a(operand);
  switch (family) {
    case 0:  // copy
      return a;
    case 1:  // reverse
      std::reverse(a.begin(), a.end());
      return a;
    case 2:  // sort
      std::sort(a.begin(), a.end());
      return a;
    case 3: {  // "dd+dd" -> sum mod 100, two digits
      TRUSTEP_CHECK(a.size() == 5 && a[2] == '+' && std::isdigit(static_cast<unsigned char>(a[0])) &&
                        std::isdigit(static_cast<unsigned char>(a[1])) &&
                        std::isdigit(static_cast<unsigned char>(a[3])) &&
                        std::isdigit(static_cast<unsigned char>(a[4])),
                    "synthetic 'add' operand '{}' is not of the form dd+dd", a);
      int sum = ((a[0] - '0') * 10 + (a[1] - '0') + (a[3] - '0') * 10 + (a[4] - '0')) % 100;
      return {static_cast<char>('0' + sum / 10), static_cast<char>('0' + sum % 10)};
    }
    case 4: {  // the closers of the still-open brackets, innermost first
      std::string stack;
      for (char c : a) {
        if (auto o = kOpen.find(c); o != std::string_view::npos) {
          stack.push_back(kClose[o]);
        } else {
          TRUSTEP_CHECK(!stack.empty() && stack.back() == c, "synthetic 'brk' operand '{}' is not a valid prefix",
                        a);
          stack.pop_back();
        }
      }
      return {stack.rbegin(), stack.rend()};
    }
    case 5:  // rotate each letter by one within a..h
      for (char& c : a) {
        auto i = kLetters.find(c);
        TRUSTEP_CHECK(i != std::string_view::npos, "synthetic 'rot' operand '{}' has a letter outside a-h", a);
        c = kLetters[(i + 1) % kLetters.size()];
      }
      return a;
  }
  TRUSTEP_CHECK(false, "unknown synthetic family {}", family);
  return {};
}

// Appends one example of `family` (<bos> tag ':' operand '=' answer <eos>) to `out`.
void append_example(std::mt19937_64& rng, int64_t family, int max_operand, std::vector<int64_t>& out) {
  std::string operand;
  if (family == 3) {
    for (int i = 0; i < 5; ++i) operand.push_back(i == 2 ? '+' : static_cast<char>('0' + draw(rng, 10)));
  } else if (family == 4) {
    // A bracket prefix that never closes the wrong bracket and ends with one open.
    int n = static_cast<int>(kMinOperand + draw(rng, max_operand - kMinOperand + 1));
    std::string stack;
    for (int i = 0; i < n; ++i) {
      bool open = stack.empty() || i == n - 1 || draw(rng, 5) < 3;
      if (open) {
        auto o = draw(rng, static_cast<int64_t>(kOpen.size()));
        operand.push_back(kOpen[o]);
        stack.push_back(kClose[o]);
      } else {
        operand.push_back(stack.back());
        stack.pop_back();
      }
    }
  } else {
    int n = static_cast<int>(kMinOperand + draw(rng, max_operand - kMinOperand + 1));
    for (int i = 0; i < n; ++i) operand.push_back(kLetters[draw(rng, static_cast<int64_t>(kLetters.size()))]);
  }
  out.push_back(kBos);
  for (char c : kTags[family]) out.push_back(static_cast<unsigned char>(c));
  out.push_back(':');
  for (char c : operand) out.push_back(static_cast<unsigned char>(c));
  out.push_back('=');
  for (char c : answer_of(family, operand)) out.push_back(static_cast<unsigned char>(c));
  out.push_back(kEos);
}

// Tensors of one batch, filled row by row from rows of seq_len+1 tokens.
struct BatchWriter {
  Batch b;
  int64_t* tokens;
  int64_t* targets;
  bool* mask;
  int64_t* context;
  int64_t seq_len;

  BatchWriter(int64_t batch, int64_t seq) : seq_len(seq) {
    b.tokens = at::empty({batch, seq}, at::kLong);
    b.targets = at::empty({batch, seq}, at::kLong);
    b.mask = at::empty({batch, seq}, at::kBool);
    b.context = at::empty({batch}, at::kLong);
    tokens = b.tokens.data_ptr<int64_t>();
    targets = b.targets.data_ptr<int64_t>();
    mask = b.mask.data_ptr<bool>();
    context = b.context.data_ptr<int64_t>();
  }
  // row: [seq_len + 1] tokens; a target counts unless it is padding.
  void put(int64_t r, const int64_t* row, int64_t label) {
    std::memcpy(tokens + r * seq_len, row, seq_len * sizeof(int64_t));
    std::memcpy(targets + r * seq_len, row + 1, seq_len * sizeof(int64_t));
    for (int64_t i = 0; i < seq_len; ++i) mask[r * seq_len + i] = row[i + 1] != kPad;
    context[r] = label;
  }
};

class SyntheticSource final : public DataSource {
 public:
  explicit SyntheticSource(const DataConfig& c) : c_(c) {
    c_.validate();
    TRUSTEP_CHECK_AS(OptionError, c_.seq_len >= kSyntheticMinSeqLen,
                     "invalid value '{}' for option '--seq-len': the synthetic corpus needs at least {} tokens "
                     "per sequence",
                     c_.seq_len, kSyntheticMinSeqLen);
    // The longest example (2 * operand + overhead) must fit in one row.
    max_operand_ = static_cast<int>(std::min<int64_t>(kMaxOperand, (c_.seq_len + 1 - kOverhead) / 2));
  }

  Batch batch(int64_t step) const override {
    TRUSTEP_CHECK(step >= 0, "data: step {} is negative", step);
    const int64_t len = c_.seq_len + 1;
    BatchWriter w(c_.batch, c_.seq_len);
    std::vector<int64_t> row, example;
    row.reserve(len);
    example.reserve(2 * kMaxOperand + kOverhead);
    for (int64_t b = 0; b < c_.batch; ++b) {
      const int64_t g = static_cast<int64_t>(c_.rank) * c_.batch + b;  // row of the global batch
      // Families take turns over global rows (and shift each step): every context in every
      // batch of >= 6 rows.
      const int64_t family = (g + step) % kSyntheticContexts;
      auto rng = row_stream(0x5359, c_.seed, step, g);
      row.clear();
      // Pack examples of the row's family until the next one does not fit; the rest is padding.
      while (true) {
        example.clear();
        append_example(rng, family, max_operand_, example);
        if (static_cast<int64_t>(row.size() + example.size()) > len) break;
        row.insert(row.end(), example.begin(), example.end());
      }
      row.resize(len, kPad);
      w.put(b, row.data(), family);
    }
    return w.b;
  }

  int64_t contexts() const override { return kSyntheticContexts; }
  std::vector<std::string> context_names() const override {
    return {std::begin(kSyntheticFamilies), std::end(kSyntheticFamilies)};
  }

 private:
  DataConfig c_;
  int max_operand_;
};

class TextSource final : public DataSource {
 public:
  TextSource(const DataConfig& c, const std::string& path) : c_(c) {
    c_.validate();
    std::error_code ec;
    TRUSTEP_CHECK_AS(OptionError, std::filesystem::is_regular_file(path, ec),
                     "invalid value '{}' for option '--data': no such file (or not a regular file)", path);
    std::ifstream in(path, std::ios::binary);
    TRUSTEP_CHECK_AS(OptionError, in.good(), "invalid value '{}' for option '--data': cannot open the file: {}", path,
                     std::strerror(errno));
    in.seekg(0, std::ios::end);
    const auto size = static_cast<uint64_t>(in.tellg());
    const uint64_t world = static_cast<uint64_t>(c_.world), rank = static_cast<uint64_t>(c_.rank);
    const uint64_t need = static_cast<uint64_t>(c_.seq_len) + 1;
    // Shards are floor(N/W) or ceil(N/W) bytes: checking the smaller one makes every rank
    // raise the same error.
    TRUSTEP_CHECK_AS(OptionError, size / world >= need,
                     "invalid value '{}' for option '--data': the file has {} bytes, too small for {} ranks with "
                     "--seq-len {}: each rank's shard (about {} bytes) needs at least seq_len+1 = {} bytes",
                     path, size, world, c_.seq_len, size / world, need);
    const uint64_t lo = rank * size / world, hi = (rank + 1) * size / world;
    shard_.resize(hi - lo);
    in.seekg(static_cast<std::streamoff>(lo));
    in.read(shard_.data(), static_cast<std::streamsize>(shard_.size()));
    TRUSTEP_CHECK_AS(OptionError, in.gcount() == static_cast<std::streamsize>(shard_.size()),
                     "invalid value '{}' for option '--data': read {} of {} bytes of rank {}'s shard", path,
                     in.gcount(), shard_.size(), rank);
  }

  Batch batch(int64_t step) const override {
    TRUSTEP_CHECK(step >= 0, "data: step {} is negative", step);
    const int64_t len = c_.seq_len + 1;
    const int64_t starts = static_cast<int64_t>(shard_.size()) - len + 1;
    BatchWriter w(c_.batch, c_.seq_len);
    std::vector<int64_t> row(len);
    for (int64_t b = 0; b < c_.batch; ++b) {
      auto rng = row_stream(0x5445, c_.seed, step, static_cast<int64_t>(c_.rank) * c_.batch + b);
      const auto* p = reinterpret_cast<const unsigned char*>(shard_.data()) + draw(rng, starts);
      for (int64_t i = 0; i < len; ++i) row[i] = p[i];
      w.put(b, row.data(), 0);
    }
    return w.b;
  }

  int64_t contexts() const override { return 1; }
  std::vector<std::string> context_names() const override { return {"text"}; }

 private:
  DataConfig c_;
  std::string shard_;  // this rank's bytes [r*N/W, (r+1)*N/W) of the file
};

}  // namespace

void DataConfig::validate() const {
  TRUSTEP_CHECK_AS(OptionError, batch >= 1, "invalid value '{}' for option '--batch': must be >= 1", batch);
  TRUSTEP_CHECK_AS(OptionError, seq_len >= 1, "invalid value '{}' for option '--seq-len': must be >= 1", seq_len);
  TRUSTEP_CHECK(world >= 1 && rank >= 0 && rank < world, "data: rank {} is outside a world of {}", rank, world);
}

DataSource::~DataSource() = default;

std::unique_ptr<DataSource> make_synthetic(const DataConfig& config) {
  return std::make_unique<SyntheticSource>(config);
}

std::unique_ptr<DataSource> make_text(const DataConfig& config, const std::string& path) {
  return std::make_unique<TextSource>(config, path);
}

std::string synthetic_answer(std::string_view question) {
  TRUSTEP_CHECK(question.size() >= 5 && question[3] == ':' && question.back() == '=',
                "synthetic question '{}' is not of the form tag:operand=", question);
  const auto tag = question.substr(0, 3);
  for (int64_t f = 0; f < kSyntheticContexts; ++f) {
    if (kTags[f] == tag) return answer_of(f, question.substr(4, question.size() - 5));
  }
  TRUSTEP_CHECK(false, "synthetic question '{}' has an unknown tag '{}'", question, tag);
  return {};
}

int64_t context_of_prompt(std::string_view prompt) {
  if (prompt.size() < 4 || prompt[3] != ':') return -1;
  for (int64_t f = 0; f < kSyntheticContexts; ++f)
    if (kTags[f] == prompt.substr(0, 3)) return f;
  return -1;
}

std::string decode(const int64_t* ids, int64_t n) {
  std::string s;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] == kBos) s += "<bos>";
    else if (ids[i] == kEos) s += "<eos>";
    else if (ids[i] == kPad) s += "<pad>";
    else if (ids[i] >= 0 && ids[i] < 256) s.push_back(static_cast<char>(ids[i]));
    else s += fmt::format("<{}>", ids[i]);
  }
  return s;
}

}  // namespace trustep::train
