// Generic, model-agnostic sharded checkpoints (layout and manifest: docs/formats.md#checkpoints).
//
//   ROOT/step-00000100/manifest.json                         format, step, world size, meta, files
//   ROOT/step-00000100/replicated.safetensors                tensors identical on every rank (rank 0)
//   ROOT/step-00000100/shard-00001-of-00002.safetensors      rank 1's sharded tensors, global names
//   ROOT/step-00000100/<extra>                               files written by rank 0 through callbacks
//   ROOT/latest                                              "step-00000100"
//
// Saving is collective and atomic: every file goes into ROOT/.tmp-step-00000100 first and is
// fsynced; the ranks exchange their files' sizes and crc32 (or their error); only when every
// rank succeeded does rank 0 write the manifest, rename the directory into place and update
// `latest`. Any failure on any rank becomes the same collective Error on every rank and leaves
// the previous checkpoint and `latest` untouched. Reading needs no communication: a checkpoint
// written by W ranks can be read by any number of processes (tensors are found by global name).
#pragma once

#include "comm/communicator.h"
#include "core/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace trustep::train {

inline constexpr const char* kCheckpointFormat = "trustep.checkpoint";
inline constexpr int kCheckpointVersion = 1;

struct CheckpointContents {
  int64_t step = 0;             // >= 0; names the directory (step-%08d)
  nlohmann::json meta;          // model config, trainer state (rng seeds, loss, ...): stored in the manifest
  TensorMap replicated;         // identical on every rank; rank 0 writes it
  TensorMap sharded;            // this rank's tensors, global names; every name unique across ranks
  // Extra files written by rank 0, e.g. {"routing.safetensors", writer}; the writer creates the
  // file at the path it is given (inside the temporary directory). A name is a plain file name
  // (no '/', not "manifest.json", "replicated.safetensors" or "shard-*"); other ranks' entries are ignored.
  std::map<std::string, std::function<void(const std::string& path)>> rank0_files;
};

struct SaveOptions {
  // Keep this many step directories (the one just written and the most recent others by step
  // number); 0 keeps all. Pruning happens after `latest` is updated; failures to prune are logged.
  int keep_last = 0;
};

// "step-00000100".
std::string step_dir_name(int64_t step);

// Collective: every rank calls it with the same root and step. Returns the final step directory
// (ROOT/step-XXXXXXXX). ROOT must be on a file system every rank sees (rank 0 creates and renames
// the directories). Throws the same collective trustep::Error on every rank when any rank fails;
// the error names the rank, the file and the cause (errno text).
std::string save_checkpoint(comm::Communicator& comm, const std::string& root, const CheckpointContents& c,
                            const SaveOptions& options = {});

struct CheckpointFile {
  std::string name;                  // file name inside the step directory
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
  int rank = -1;                     // the writing rank for shards; -1 for rank 0's replicated and extra files
  std::vector<std::string> tensors;  // for .safetensors files
};

// A checkpoint opened for reading; no communication.
class Checkpoint {
 public:
  // `path` is ROOT (follows ROOT/latest) or a step directory. Validates the manifest and checks
  // that every listed file exists with the listed size; with verify_checksums also reads every
  // file once and checks its crc32. Errors name the path and what is wrong.
  static Checkpoint open(const std::string& path, bool verify_checksums = true);

  int64_t step() const { return step_; }
  int world_size() const { return world_size_; }
  const nlohmann::json& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }
  const std::vector<CheckpointFile>& files() const { return files_; }

  // Replicated tensors for which want(name) is true (empty want = all).
  TensorMap load_replicated(const std::function<bool(const std::string&)>& want = {}) const;
  // Tensors from the shard files by global name, whichever shard holds them; reads only the
  // shard files holding them and only their byte ranges. Names missing from every shard -> Error naming them.
  TensorMap load_sharded(const std::vector<std::string>& names) const;
  // Every sharded tensor name across all shards, sorted.
  std::vector<std::string> sharded_names() const;
  // Path of a file listed in the manifest (e.g. "routing.safetensors"); Error if not listed.
  std::string file(const std::string& name) const;

 private:
  Checkpoint() = default;
  std::string dir_;
  int64_t step_ = 0;
  int world_size_ = 0;
  nlohmann::json meta_;
  std::vector<CheckpointFile> files_;
  std::map<std::string, size_t> shard_index_;  // sharded tensor name -> index into files_
};

}  // namespace trustep::train
