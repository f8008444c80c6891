// libFuzzer target: load_safetensors on arbitrary bytes (the input is the whole file).
// Correct means: bad input raises trustep::Error and nothing else (no sanitizer report, no
// allocation beyond -malloc_limit_mb from a corrupt length); accepted input is consistent:
// its tensors' bytes tile the data section, a selective load returns the same bytes for the
// wanted names only, and writing it back with save_safetensors reads back identical.
#include "core/safetensors.h"
#include "fuzz_util.h"

#include <cstring>

namespace {

using namespace trustep;

bool odd_length(const std::string& name) { return name.size() % 2 == 1; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Verdict verdict;
  const std::string path = fuzz::scratch() / "input.safetensors";
  fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  SafetensorsFile file;
  if (!fuzz::accepts("load_safetensors", [&] { file = load_safetensors(path); })) return 0;

  uint64_t header_len = 0;
  fuzz::require(size >= 8, "accepted a file shorter than its header length");
  std::memcpy(&header_len, data, sizeof header_len);
  uint64_t tensor_bytes = 0;
  for (const auto& [name, t] : file.tensors) {
    fuzz::require(t.device().is_cpu() && t.is_contiguous(), "tensor '" + name + "' is not contiguous on the CPU");
    tensor_bytes += t.nbytes();
  }
  fuzz::require(8 + header_len + tensor_bytes == size, "the tensors do not tile the data section");

  SafetensorsFile some;
  fuzz::must_succeed("load_safetensors(want)", [&] { some = load_safetensors(path, odd_length); });
  TensorMap wanted;
  for (const auto& [name, t] : file.tensors)
    if (odd_length(name)) wanted.emplace(name, t);
  fuzz::require_same(some.tensors, wanted, "selective load");
  fuzz::require(some.metadata == file.metadata, "selective load: metadata differs");

  const std::string again = fuzz::scratch() / "again.safetensors";
  fuzz::must_succeed("save_safetensors", [&] { save_safetensors(again, file.tensors, file.metadata); });
  SafetensorsFile back;
  fuzz::must_succeed("load_safetensors(saved)", [&] { back = load_safetensors(again); });
  fuzz::require_same(back.tensors, file.tensors, "round trip");
  fuzz::require(back.metadata == file.metadata, "round trip: metadata differs");
  verdict.accepted = true;
  return 0;
}
