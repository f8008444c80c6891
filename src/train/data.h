// Training data: byte-level tokens, a built-in synthetic multi-context corpus and text files.
//
// Every DataSource is stateless: batch(step) is a pure function of (seed, rank, world, step),
// so a resumed run (or a rerun) sees exactly the same data, and ranks see disjoint data.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace trustep::train {

// Bytes 0..255 are their own tokens; then the specials. The vocabulary is padded to a
// multiple of 8 (ids 259..263 are never produced).
constexpr int64_t kBos = 256;
constexpr int64_t kEos = 257;
constexpr int64_t kPad = 258;
constexpr int64_t kVocabSize = 264;

struct DataConfig {
  int64_t batch = 16;    // sequences per rank and step (--batch)
  int64_t seq_len = 64;  // tokens per sequence (--seq-len)
  uint64_t seed = 0;     // --seed
  int rank = 0;
  int world = 1;
  // Throws OptionError naming --batch / --seq-len; rank/world misuse is a plain Error.
  void validate() const;
};

struct Batch {
  at::Tensor tokens;   // [B, S] int64 model input
  at::Tensor targets;  // [B, S] int64 next tokens (tokens shifted by one)
  at::Tensor mask;     // [B, S] bool: targets that count in the loss (false on padding)
  at::Tensor context;  // [B] int64 context label of each sequence, in [0, contexts())
};

class DataSource {
 public:
  virtual ~DataSource();
  // The batch of this rank at `step` (>= 0); CPU tensors, identical for identical arguments.
  virtual Batch batch(int64_t step) const = 0;
  virtual int64_t contexts() const = 0;
  virtual std::vector<std::string> context_names() const = 0;
};

// Synthetic corpus: one task family per context (see kSyntheticFamilies), several examples
// of one family packed per row, e.g. <bos>rev:abcd=dcba<eos><bos>rev:hgb=bgh<eos><pad>...
// Row g of the global batch (g = rank * batch + b) depends only on (seed, step, g), so the
// union of all ranks' rows is the same for any world size at equal global batch.
// Needs seq_len >= kSyntheticMinSeqLen (OptionError naming --seq-len).
std::unique_ptr<DataSource> make_synthetic(const DataConfig& config);

// A text file as raw bytes. Rank r reads only its shard, the contiguous byte range
// [r*N/W, (r+1)*N/W), once; each row is a window of seq_len+1 bytes drawn uniformly from
// the shard. One context, "text". OptionError naming --data when the file is unreadable or
// a shard is shorter than seq_len+1.
std::unique_ptr<DataSource> make_text(const DataConfig& config, const std::string& path);

// The synthetic task families, in context-label order.
inline constexpr const char* kSyntheticFamilies[] = {"copy", "reverse", "sort", "add", "brackets", "rotate"};
constexpr int64_t kSyntheticContexts = 6;
constexpr int64_t kSyntheticMinSeqLen = 16;

// The answer to one synthetic question such as "rev:abcd=" (tag, operand, '='; no specials):
// "dcba". Throws Error on a question that is not of a known family. For evaluation and tests.
std::string synthetic_answer(std::string_view question);

// The context label of a synthetic prompt from its tag ("rev:abcd=" -> 1), -1 when the text does
// not start with a known tag. Lets `infer` route a prompt like its training data.
int64_t context_of_prompt(std::string_view prompt);

// Human-readable tokens: bytes as characters, specials as <bos> <eos> <pad>.
std::string decode(const int64_t* ids, int64_t n);

}  // namespace trustep::train
