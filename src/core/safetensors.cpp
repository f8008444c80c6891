#include "core/safetensors.h"

#include "core/dtype.h"
#include "core/error.h"

#include <ATen/ops/empty.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

namespace trustep {
namespace {

// The data section is copied byte for byte into tensors, so the host must be little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using json = nlohmann::json;

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};

constexpr std::array<DtypeName, 11> kDtypes{{
    {"F32", c10::ScalarType::Float},
    {"F16", c10::ScalarType::Half},
    {"BF16", c10::ScalarType::BFloat16},
    {"F64", c10::ScalarType::Double},
    {"I64", c10::ScalarType::Long},
    {"I32", c10::ScalarType::Int},
    {"U8", c10::ScalarType::Byte},
    {"I8", c10::ScalarType::Char},
    {"BOOL", c10::ScalarType::Bool},
    {"F8_E4M3", c10::ScalarType::Float8_e4m3fn},
    {"F8_E5M2", c10::ScalarType::Float8_e5m2},
}};

const char* file_dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  return nullptr;
}

std::string supported_names() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

std::string errno_text() { return std::strerror(errno); }

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Returns close()'s result so a writer sees late write errors (NFS reports them here).
  int close() {
    const int rc = fd_ >= 0 ? ::close(fd_) : 0;
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    TRUSTEP_CHECK(n > 0, "safetensors '{}': write failed: {}", path, errno_text());
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

// Reads exactly `bytes` at `offset`; `what` names the part being read in errors.
void read_at(int fd, void* data, size_t bytes, uint64_t offset, const std::string& path, const std::string& what) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, p, std::min<size_t>(bytes, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    TRUSTEP_CHECK(n >= 0, "safetensors '{}': reading {} failed: {}", path, what, errno_text());
    TRUSTEP_CHECK(n > 0, "safetensors '{}': file truncated while reading {}", path, what);
    p += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

struct Entry {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the start of the data section
};

uint64_t header_uint(const json& v, const std::string& path, const std::string& name, const char* field) {
  TRUSTEP_CHECK(v.is_number_integer() && (v.is_number_unsigned() || v.get<int64_t>() >= 0),
                "safetensors '{}': tensor '{}': {} must hold non-negative integers, got {}", path, name, field,
                v.dump());
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& name, const json& v, const std::string& path) {
  TRUSTEP_CHECK(v.is_object(), "safetensors '{}': tensor '{}': header entry must be an object, got {}", path,
                name, v.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    TRUSTEP_CHECK(v.contains(field), "safetensors '{}': tensor '{}': header entry has no \"{}\"", path, name, field);
  Entry e;
  e.name = name;
  const json& dtype = v["dtype"];
  TRUSTEP_CHECK(dtype.is_string(), "safetensors '{}': tensor '{}': dtype must be a string, got {}", path, name,
                dtype.dump());
  const auto* found = std::find_if(kDtypes.begin(), kDtypes.end(),
                                   [&](const DtypeName& d) { return dtype.get<std::string>() == d.name; });
  TRUSTEP_CHECK(found != kDtypes.end(), "safetensors '{}': tensor '{}': unknown dtype '{}' (supported: {})", path,
                name, dtype.get<std::string>(), supported_names());
  e.dtype = found->type;

  const json& shape = v["shape"];
  TRUSTEP_CHECK(shape.is_array(), "safetensors '{}': tensor '{}': shape must be an array, got {}", path, name,
                shape.dump());
  // span: the product with zero dims counted as 1, which bounds LibTorch's strides (int64) even
  // when numel is 0; [0, 2^62, 2^62] would otherwise throw c10::Error from at::empty.
  uint64_t numel = 1, span = 1;
  for (const json& d : shape) {
    const uint64_t dim = header_uint(d, path, name, "shape");
    TRUSTEP_CHECK(dim <= static_cast<uint64_t>(INT64_MAX) && !__builtin_mul_overflow(numel, dim, &numel) &&
                      !__builtin_mul_overflow(span, std::max<uint64_t>(dim, 1), &span) &&
                      span <= static_cast<uint64_t>(INT64_MAX),
                  "safetensors '{}': tensor '{}': shape {} overflows", path, name, shape.dump());
    e.shape.push_back(static_cast<int64_t>(dim));
  }

  const json& offsets = v["data_offsets"];
  TRUSTEP_CHECK(offsets.is_array() && offsets.size() == 2,
                "safetensors '{}': tensor '{}': data_offsets must be [begin, end], got {}", path, name,
                offsets.dump());
  e.begin = header_uint(offsets[0], path, name, "data_offsets");
  e.end = header_uint(offsets[1], path, name, "data_offsets");
  TRUSTEP_CHECK(e.begin <= e.end, "safetensors '{}': tensor '{}': data_offsets [{}, {}] begin after end", path,
                name, e.begin, e.end);
  uint64_t nbytes = 0;
  TRUSTEP_CHECK(!__builtin_mul_overflow(numel, c10::elementSize(e.dtype), &nbytes),
                "safetensors '{}': tensor '{}': shape {} overflows", path, name, shape.dump());
  TRUSTEP_CHECK(nbytes == e.end - e.begin,
                "safetensors '{}': tensor '{}': {} with shape {} needs {} bytes but data_offsets [{}, {}] hold {}",
                path, name, found->name, shape.dump(), nbytes, e.begin, e.end, e.end - e.begin);
  return e;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    at::Tensor data;  // CPU, contiguous
  };
  std::vector<Item> items;
  for (const auto& [name, t] : tensors) {
    TRUSTEP_CHECK(!name.empty() && name != "__metadata__", "safetensors '{}': invalid tensor name '{}'", path, name);
    TRUSTEP_CHECK(t.defined(), "safetensors '{}': tensor '{}' is undefined", path, name);
    TRUSTEP_CHECK(t.layout() == c10::kStrided, "safetensors '{}': tensor '{}' is not a dense (strided) tensor", path,
                  name);
    TRUSTEP_CHECK(file_dtype_name(t.scalar_type()) != nullptr,
                  "safetensors '{}': tensor '{}' has dtype {}, which the format subset does not support", path, name,
                  dtype_name(t.scalar_type()));
    items.push_back({&name, t.to(c10::kCPU).contiguous()});
  }
  // Widest elements first, as the reference writer does: with the 8-aligned header every
  // tensor then starts at a multiple of its element size (readers may map the file).
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.data.element_size() > b.data.element_size();
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Item& it : items) {
    const uint64_t nbytes = it.data.nbytes();
    header[*it.name] = {{"dtype", file_dtype_name(it.data.scalar_type())},
                        {"shape", it.data.sizes().vec()},
                        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // e.g. a name or metadata value that is not UTF-8
    throw Error(fmt::format("safetensors '{}': cannot encode the header: {}", path, e.what()), TRUSTEP_ORIGIN);
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  TRUSTEP_CHECK(text.size() <= kSafetensorsMaxHeaderBytes, "safetensors '{}': header of {} bytes exceeds {} bytes",
                path, text.size(), kSafetensorsMaxHeaderBytes);

  // Same directory as the target so that rename() is atomic; the pid keeps ranks that
  // write the same path from sharing a temporary file.
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  TRUSTEP_CHECK(fd.get() >= 0, "safetensors '{}': cannot create '{}': {}", path, tmp, errno_text());
  try {
    const uint64_t n = text.size();  // little-endian (asserted above)
    write_all(fd.get(), &n, sizeof n, path);
    write_all(fd.get(), text.data(), text.size(), path);
    for (const Item& it : items) write_all(fd.get(), it.data.const_data_ptr(), it.data.nbytes(), path);
    TRUSTEP_CHECK(::fsync(fd.get()) == 0, "safetensors '{}': fsync failed: {}", path, errno_text());
    TRUSTEP_CHECK(fd.close() == 0, "safetensors '{}': close failed: {}", path, errno_text());
    TRUSTEP_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "safetensors '{}': cannot rename '{}' over it: {}", path,
                  tmp, errno_text());
  } catch (...) {
    fd.close();
    ::unlink(tmp.c_str());
    throw;
  }
}

SafetensorsFile load_safetensors(const std::string& path, const std::function<bool(const std::string&)>& want) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  TRUSTEP_CHECK(fd.get() >= 0, "safetensors '{}': cannot open: {}", path, errno_text());
  struct stat st {};
  TRUSTEP_CHECK(::fstat(fd.get(), &st) == 0, "safetensors '{}': cannot stat: {}", path, errno_text());
  const auto file_size = static_cast<uint64_t>(st.st_size);
  TRUSTEP_CHECK(file_size >= 8, "safetensors '{}': file truncated: {} bytes, shorter than the 8-byte header length",
                path, file_size);

  uint64_t header_len = 0;
  read_at(fd.get(), &header_len, sizeof header_len, 0, path, "the header length");
  TRUSTEP_CHECK(header_len <= kSafetensorsMaxHeaderBytes, "safetensors '{}': header length {} exceeds {} bytes", path,
                header_len, kSafetensorsMaxHeaderBytes);
  TRUSTEP_CHECK(header_len <= file_size - 8,
                "safetensors '{}': file truncated: header length {} but only {} bytes follow it", path, header_len,
                file_size - 8);
  std::string text(header_len, '\0');
  read_at(fd.get(), text.data(), text.size(), 8, path, "the header");

  // Duplicate names would silently keep the last entry; collect them while parsing.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t note_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(text, note_keys);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    throw Error(fmt::format("safetensors '{}': bad JSON header: {}", path, e.what()), TRUSTEP_ORIGIN);
  }
  TRUSTEP_CHECK(header.is_object(), "safetensors '{}': header must be a JSON object, got {}", path,
                header.type_name());
  TRUSTEP_CHECK(duplicate.empty(), "safetensors '{}': tensor '{}' appears twice in the header", path, duplicate);

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      TRUSTEP_CHECK(v.is_object(), "safetensors '{}': __metadata__ must be an object of strings, got {}", path,
                    v.dump());
      for (const auto& [key, value] : v.items()) {
        TRUSTEP_CHECK(value.is_string(), "safetensors '{}': __metadata__ value of '{}' must be a string, got {}",
                      path, key, value.dump());
        out.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(name, v, path));
  }

  // The byte ranges must tile the data section exactly: no overlap, no gap, nothing after
  // the last tensor (as the format specifies; a hole could hide a second file format).
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return std::pair(a->begin, a->end) < std::pair(b->begin, b->end);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : by_offset) {
    TRUSTEP_CHECK(e->end <= data_size,
                  "safetensors '{}': tensor '{}': data_offsets [{}, {}] reach past the data section ({} bytes): file "
                  "truncated or offsets out of range",
                  path, e->name, e->begin, e->end, data_size);
    TRUSTEP_CHECK(e->begin >= covered, "safetensors '{}': tensor '{}': data_offsets [{}, {}] overlap tensor '{}' [{}, {}]",
                  path, e->name, e->begin, e->end, previous ? previous->name : "", previous ? previous->begin : 0,
                  covered);
    TRUSTEP_CHECK(e->begin == covered, "safetensors '{}': tensor '{}': data_offsets [{}, {}] leave a gap of {} bytes "
                  "after offset {}", path, e->name, e->begin, e->end, e->begin - covered, covered);
    covered = e->end;
    previous = e;
  }
  TRUSTEP_CHECK(covered == data_size, "safetensors '{}': {} bytes after the last tensor (data section of {} bytes)",
                path, data_size - covered, data_size);

  for (const Entry& e : entries) {
    if (want && !want(e.name)) continue;
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));  // CPU, contiguous
    read_at(fd.get(), t.mutable_data_ptr(), e.end - e.begin, data_start + e.begin, path,
            fmt::format("tensor '{}'", e.name));
    if (e.dtype == c10::ScalarType::Bool) {
      // Any other byte is an invalid bool in LibTorch (undefined results downstream).
      const auto* p = static_cast<const uint8_t*>(t.const_data_ptr());
      TRUSTEP_CHECK(std::all_of(p, p + t.numel(), [](uint8_t b) { return b <= 1; }),
                    "safetensors '{}': tensor '{}': BOOL data holds bytes other than 0 and 1", path, e.name);
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace trustep
