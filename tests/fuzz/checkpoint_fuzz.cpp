// libFuzzer target: Checkpoint::open, load_replicated and load_sharded on a checkpoint whose
// files all come from the input, written in the format `head` prints several files in:
//
//   fixup nocrc root              optional words (below), before the first file
//   ==> manifest.json <==
//   {"format": "trustep.checkpoint", ...}
//   ==> shard-00000-of-00001.safetensors <==
//   <bytes>                       up to the newline before the next "==> " line, or the end
//
// Files go into ROOT/step-00000001/, except `latest`, which goes into ROOT. Names other than
// [A-Za-z0-9._-]{1,64} are skipped. Words: `root` opens ROOT (through `latest`) instead of the
// step directory; `nocrc` opens without verifying checksums; `fixup` first sets every manifest
// entry's "bytes" and "crc32" to the true values of the file it names, so that mutations reach
// the loaders instead of stopping at a size or checksum mismatch.
//
// Correct means: bad input raises trustep::Error and nothing else; an opened checkpoint keeps
// its promises (one shard per rank, listed files of the listed size, every sharded name loads
// from its shard, a name in no shard is an Error); and what loads saves again through
// save_checkpoint (a world of one) and reopens with the same step, meta and tensors.
#include "comm/self_communicator.h"
#include "fuzz_util.h"
#include "train/checkpoint.h"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

namespace {

using namespace trustep;
using json = nlohmann::json;

bool plain_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 && name != "." && name != ".." &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-';
         });
}

struct Input {
  std::string words;                            // before the first file
  std::map<std::string, std::string> files;     // name -> bytes (a later file of the same name wins)
};

Input split(std::string_view in) {
  constexpr std::string_view kOpen = "==> ", kClose = " <==";
  std::vector<size_t> starts;  // "==> " at the start of a line
  for (size_t p = in.find(kOpen); p != std::string_view::npos; p = in.find(kOpen, p + 1))
    if (p == 0 || in[p - 1] == '\n') starts.push_back(p);
  Input out;
  out.words = std::string(in.substr(0, starts.empty() ? in.size() : starts[0]));
  for (size_t k = 0; k < starts.size(); ++k) {
    const size_t line_end = std::min(in.find('\n', starts[k]), in.size());
    const size_t next = k + 1 < starts.size() ? starts[k + 1] - 1 : in.size();  // drop the newline before "==> "
    const std::string_view header = in.substr(starts[k], line_end - starts[k]);
    if (header.size() < kOpen.size() + kClose.size() || header.substr(header.size() - kClose.size()) != kClose)
      continue;
    const std::string_view name = header.substr(kOpen.size(), header.size() - kOpen.size() - kClose.size());
    const size_t begin = std::min(line_end + 1, in.size());
    if (plain_name(name)) out.files[std::string(name)] = std::string(in.substr(begin, next > begin ? next - begin : 0));
  }
  return out;
}

bool has_word(const std::string& words, const std::string& w) {
  size_t p = 0;
  while ((p = words.find(w, p)) != std::string::npos) {
    const bool starts = p == 0 || std::isspace(static_cast<unsigned char>(words[p - 1]));
    const bool ends = p + w.size() == words.size() || std::isspace(static_cast<unsigned char>(words[p + w.size()]));
    if (starts && ends) return true;
    p += w.size();
  }
  return false;
}

// Rewrites "bytes" and "crc32" of every manifest entry that names a file of the input.
std::string fix_up(const std::string& manifest, const std::map<std::string, std::string>& files) {
  json m = json::parse(manifest, nullptr, /*allow_exceptions=*/false);
  if (!m.is_object() || !m.contains("files") || !m["files"].is_array()) return manifest;
  for (json& f : m["files"]) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) continue;
    const auto it = files.find(f["name"].get<std::string>());
    if (it == files.end()) continue;
    const std::string& bytes = it->second;
    f["bytes"] = bytes.size();
    f["crc32"] = ::crc32(::crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()),
                         static_cast<uInt>(bytes.size()));
  }
  return m.dump(-1, ' ', false, json::error_handler_t::replace);
}

comm::Communicator& self() {
  static comm::SelfCommunicator comm{comm::CommOptions{}};
  return comm;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Verdict verdict;
  Input input = split({reinterpret_cast<const char*>(data), size});
  const bool fixup = has_word(input.words, "fixup"), verify = !has_word(input.words, "nocrc"),
             via_root = has_word(input.words, "root");
  if (fixup && input.files.count("manifest.json"))
    input.files["manifest.json"] = fix_up(input.files["manifest.json"], input.files);

  const fuzz::fs::path root = fuzz::scratch() / "checkpoint", step_dir = root / "step-00000001";
  fuzz::fs::remove_all(root);
  fuzz::fs::create_directories(step_dir);
  for (const auto& [name, bytes] : input.files) fuzz::write_file(name == "latest" ? root / name : step_dir / name, bytes);

  const std::string opened = (via_root ? root : step_dir).string();
  std::optional<train::Checkpoint> ck;
  if (!fuzz::accepts("Checkpoint::open", [&] { ck.emplace(train::Checkpoint::open(opened, verify)); })) return 0;

  fuzz::require(ck->step() >= 0 && ck->world_size() >= 1, "opened a checkpoint with step < 0 or world size < 1");
  std::vector<int> shards(static_cast<size_t>(ck->world_size()), 0);
  std::map<std::string, std::string> owner;  // sharded tensor -> path of its shard
  for (const auto& f : ck->files()) {
    std::string path;
    fuzz::must_succeed("Checkpoint::file", [&] { path = ck->file(f.name); });
    fuzz::require(fuzz::fs::file_size(path) == f.bytes, "file '" + f.name + "' does not have the listed size");
    if (f.rank < 0) continue;
    fuzz::require(f.rank < ck->world_size(), "file '" + f.name + "' has a rank outside the world");
    ++shards[static_cast<size_t>(f.rank)];
    for (const auto& t : f.tensors) owner.emplace(t, path);
  }
  fuzz::require(std::all_of(shards.begin(), shards.end(), [](int n) { return n == 1; }),
                "opened a checkpoint without exactly one shard per rank");
  const std::vector<std::string> names = ck->sharded_names();
  fuzz::require(std::is_sorted(names.begin(), names.end()) &&
                    std::adjacent_find(names.begin(), names.end()) == names.end() && names.size() == owner.size(),
                "sharded_names() is not the sorted set of the shards' tensor names");

  TensorMap none;
  fuzz::must_succeed("load_sharded({})", [&] { none = ck->load_sharded({}); });
  fuzz::require(none.empty(), "load_sharded({}) returned tensors");
  std::string absent = "absent";
  while (owner.count(absent)) absent += '_';
  fuzz::require(!fuzz::accepts("load_sharded(absent)", [&] { ck->load_sharded({absent}); }),
                "load_sharded accepted a name in no shard");

  TensorMap replicated, sharded;
  const bool replicated_ok = fuzz::accepts("load_replicated", [&] { replicated = ck->load_replicated(); });
  if (replicated_ok)
    fuzz::require_same(replicated, load_safetensors(ck->file("replicated.safetensors")).tensors, "load_replicated");
  const bool sharded_ok = fuzz::accepts("load_sharded", [&] { sharded = ck->load_sharded(names); });
  if (sharded_ok)
    for (const auto& name : names) {
      const auto it = sharded.find(name);
      fuzz::require(it != sharded.end(), "load_sharded left out '" + name + "'");
      const TensorMap direct = load_safetensors(owner[name], [&](const std::string& n) { return n == name; }).tensors;
      fuzz::require(direct.count(name) && fuzz::same_bits(it->second, direct.at(name)),
                    "load_sharded('" + name + "') differs from its shard's bytes");
    }
  if (!replicated_ok || !sharded_ok) return 0;
  fuzz::require(sharded.size() == names.size(), "load_sharded returned names it was not asked for");

  // What loads, saves: the same contents through the writer, reopened from its root.
  train::CheckpointContents contents;
  contents.step = ck->step();
  contents.meta = ck->meta();
  contents.replicated = replicated;
  contents.sharded = sharded;
  const fuzz::fs::path copy = fuzz::scratch() / "copy";
  fuzz::fs::remove_all(copy);
  fuzz::must_succeed("save_checkpoint", [&] { train::save_checkpoint(self(), copy.string(), contents); });
  std::optional<train::Checkpoint> again;
  fuzz::must_succeed("Checkpoint::open(saved)", [&] { again.emplace(train::Checkpoint::open(copy.string())); });
  fuzz::require(again->step() == ck->step() && again->world_size() == 1, "round trip: step or world size differs");
  fuzz::require(again->meta() == ck->meta(), "round trip: meta differs: " + ck->meta().dump(-1, ' ', false,
                                                                                           json::error_handler_t::replace));
  fuzz::must_succeed("round trip loads", [&] {
    fuzz::require_same(again->load_replicated(), replicated, "round trip (replicated)");
    fuzz::require_same(again->load_sharded(names), sharded, "round trip (sharded)");
  });
  verdict.accepted = true;
  return 0;
}
