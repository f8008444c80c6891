#include "train/checkpoint.h"

#include "core/error.h"
#include "core/log.h"

#include <fmt/ranges.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

namespace trustep::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kManifest = "manifest.json";
constexpr const char* kReplicated = "replicated.safetensors";
constexpr const char* kLatest = "latest";
constexpr const char* kChecksum = "crc32";

std::string errno_text() { return std::strerror(errno); }

std::string join(const fs::path& dir, const std::string& name) { return (dir / name).string(); }

std::string shard_name(int rank, int world) { return fmt::format("shard-{:05d}-of-{:05d}.safetensors", rank, world); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A name that stays inside its directory.
bool plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// fsync of a file or a directory (directories: makes renames and new entries durable).
void fsync_path(const std::string& path, bool directory) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0)));
  TRUSTEP_CHECK(fd.get() >= 0, "checkpoint: cannot open '{}' to fsync it: {}", path, errno_text());
  TRUSTEP_CHECK(::fsync(fd.get()) == 0, "checkpoint: fsync of '{}' failed: {}", path, errno_text());
}

// Writes `text` to `path` through `path`.tmp, fsync and rename (the directory is not fsynced).
void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    TRUSTEP_CHECK(fd.get() >= 0, "checkpoint: cannot create '{}': {}", tmp, errno_text());
    try {
      size_t done = 0;
      while (done < text.size()) {
        const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        TRUSTEP_CHECK(n > 0, "checkpoint: writing '{}' failed: {}", tmp, errno_text());
        done += static_cast<size_t>(n);
      }
      TRUSTEP_CHECK(::fsync(fd.get()) == 0, "checkpoint: fsync of '{}' failed: {}", tmp, errno_text());
      TRUSTEP_CHECK(fd.close() == 0, "checkpoint: closing '{}' failed: {}", tmp, errno_text());
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(fmt::format("checkpoint: cannot rename '{}' to '{}': {}", tmp, path, why), TRUSTEP_ORIGIN);
  }
}

std::string read_text(const std::string& path, const std::string& what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  TRUSTEP_CHECK(fd.get() >= 0, "{} '{}': cannot open: {}", what, path, errno_text());
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    TRUSTEP_CHECK(n >= 0, "{} '{}': read failed: {}", what, path, errno_text());
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    TRUSTEP_CHECK(text.size() <= (64u << 20), "{} '{}': larger than 64 MiB", what, path);
  }
  return text;
}

struct FileSum {
  uint64_t bytes = 0;
  uint32_t crc = 0;
};

// Size and crc32 of the whole file, read once in 1 MiB pieces.
FileSum file_sum(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  TRUSTEP_CHECK(fd.get() >= 0, "checkpoint: cannot open '{}': {}", path, errno_text());
  std::vector<unsigned char> buf(1 << 20);
  FileSum sum;
  uLong crc = ::crc32(0L, Z_NULL, 0);
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    TRUSTEP_CHECK(n >= 0, "checkpoint: reading '{}' failed: {}", path, errno_text());
    if (n == 0) break;
    crc = ::crc32(crc, buf.data(), static_cast<uInt>(n));
    sum.bytes += static_cast<uint64_t>(n);
  }
  sum.crc = static_cast<uint32_t>(crc);
  return sum;
}

// Describes a file just written into the temporary directory: fsynced, summed, and (for
// safetensors) its tensor names, read from its validated header.
json describe_file(const std::string& dir, const std::string& name, int rank, bool safetensors) {
  const std::string path = join(dir, name);
  struct stat st{};
  TRUSTEP_CHECK(::stat(path.c_str(), &st) == 0, "checkpoint: '{}' was not written: {}", path, errno_text());
  TRUSTEP_CHECK(S_ISREG(st.st_mode), "checkpoint: '{}' is not a regular file", path);
  fsync_path(path, /*directory=*/false);
  const FileSum sum = file_sum(path);
  json f = {{"name", name}, {"rank", rank}, {"bytes", sum.bytes}, {"crc32", sum.crc}};
  if (safetensors) {
    std::vector<std::string> names;
    load_safetensors(path, [&](const std::string& n) {
      names.push_back(n);
      return false;
    });
    std::sort(names.begin(), names.end());
    f["tensors"] = names;
  }
  return f;
}

std::string describe_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

// Every rank's JSON value, in rank order, on every rank (the same bytes everywhere, so the same
// decisions).
std::vector<json> exchange(comm::Communicator& comm, const json& mine, const std::string& tag) {
  std::vector<json> out;
  for (const auto& text : comm.all_gather_text(mine.dump(-1, ' ', false, json::error_handler_t::replace), tag))
    out.push_back(json::parse(text));
  return out;
}

// The errors the ranks reported ("" when none), in rank order.
std::string gathered_errors(const std::vector<json>& all) {
  std::string errors;
  int failed = 0;
  for (size_t r = 0; r < all.size(); ++r) {
    const std::string e = all[r].value("error", std::string());
    if (e.empty()) continue;
    ++failed;
    errors += fmt::format("{}rank {}: {}", errors.empty() ? "" : "; ", r, e);
  }
  if (failed == 0) return "";
  return fmt::format("failed on {} of {} rank(s): {}", failed, all.size(), errors);
}

// rename(2) that swaps two existing paths atomically (Linux renameat2 RENAME_EXCHANGE).
// Returns false with errno set when the file system cannot (EINVAL, ENOSYS).
bool exchange_paths(const std::string& a, const std::string& b) {
#ifdef RENAME_EXCHANGE
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
#else
  errno = ENOSYS;
  return false;
#endif
}

void remove_quietly(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  // ENOTDIR: a parent is not a directory, so there is nothing to remove.
  if (ec && ec != std::errc::not_a_directory) log::warn("checkpoint: cannot remove '{}': {}", path, ec.message());
}

// Removes step directories beyond the `keep` most recent (by step number), never `current`.
void prune(const std::string& root, const std::string& current, int keep) {
  std::vector<std::pair<int64_t, std::string>> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == current || name.rfind("step-", 0) != 0 || !entry.is_directory()) continue;
    int64_t step = -1;
    const char* first = name.data() + 5;
    const char* last = name.data() + name.size();
    const auto [ptr, err] = std::from_chars(first, last, step);
    if (err != std::errc() || ptr != last || first == last) continue;
    steps.emplace_back(step, name);
  }
  if (ec) {
    log::warn("checkpoint: cannot list '{}' to prune old checkpoints: {}", root, ec.message());
    return;
  }
  std::sort(steps.rbegin(), steps.rend());
  for (size_t i = static_cast<size_t>(std::max(keep - 1, 0)); i < steps.size(); ++i)
    remove_quietly(join(root, steps[i].second));
}

void check_extra_name(const std::string& name) {
  TRUSTEP_CHECK(plain_name(name), "rank0_files: '{}' is not a plain file name", name);
  TRUSTEP_CHECK(name != kManifest && name != kReplicated && name.rfind("shard-", 0) != 0 && !ends_with(name, ".tmp") &&
                    name.find(".tmp.") == std::string::npos,
                "rank0_files: the name '{}' is reserved for the checkpoint's own files", name);
}

}  // namespace

std::string step_dir_name(int64_t step) { return fmt::format("step-{:08d}", step); }

std::string save_checkpoint(comm::Communicator& comm, const std::string& root, const CheckpointContents& c,
                            const SaveOptions& options) {
  const int rank = comm.rank();
  const int world = comm.size();
  const std::string name = step_dir_name(c.step);
  const std::string tmp = join(root, ".tmp-" + name);
  const std::string final_dir = join(root, name);
  const std::string latest = join(root, kLatest);

  // Every rank reaches every exchange below; failures travel as values and become one
  // collective Error whose text depends only on exchanged values (rank 0's step and root).
  // After a failed phase rank 0 removes the temporary directory and a barrier orders that
  // removal before anyone throws.
  json step0 = c.step, root0 = root;
  const auto fail = [&](const std::string& what) {
    if (rank == 0) remove_quietly(tmp);
    comm.barrier("checkpoint.failed");
    const std::string r0 = root0.get<std::string>();
    throw Error(fmt::format("save_checkpoint: step {} to '{}': {}; the previous checkpoint and '{}' are unchanged "
                            "[raised on every rank]",
                            step0.dump(), r0, what, join(r0, kLatest)),
                TRUSTEP_ORIGIN, /*collective=*/true);
  };

  // Phase 1: arguments; rank 0 creates the temporary directory.
  json status = {{"step", c.step}, {"root", root}};
  try {
    TRUSTEP_CHECK(c.step >= 0, "the step must be >= 0, got {}", c.step);
    TRUSTEP_CHECK(!root.empty(), "the checkpoint root is an empty path");
    TRUSTEP_CHECK(options.keep_last >= 0, "keep_last must be >= 0, got {}", options.keep_last);
    if (rank == 0) {
      for (const auto& [extra, writer] : c.rank0_files) {
        check_extra_name(extra);
        TRUSTEP_CHECK(static_cast<bool>(writer), "rank0_files: the writer of '{}' is empty", extra);
      }
      std::error_code ec;
      fs::create_directories(root, ec);
      TRUSTEP_CHECK(!ec, "cannot create the checkpoint root '{}': {}", root, ec.message());
      fs::remove_all(tmp, ec);  // left by an interrupted save of the same step
      TRUSTEP_CHECK(!ec, "cannot remove the stale temporary directory '{}': {}", tmp, ec.message());
      TRUSTEP_CHECK(::mkdir(tmp.c_str(), 0755) == 0, "cannot create '{}': {}", tmp, errno_text());
    }
  } catch (...) {
    status["error"] = describe_exception();
  }
  std::vector<json> all = exchange(comm, status, "checkpoint.prepare");
  step0 = all[0]["step"];
  root0 = all[0]["root"];
  std::string problem = gathered_errors(all);
  if (problem.empty())
    for (int r = 1; r < world && problem.empty(); ++r)
      if (all[r]["step"] != all[0]["step"])
        problem = fmt::format("ranks disagree on the step: rank 0 saves {}, rank {} saves {}", all[0]["step"].dump(), r,
                              all[r]["step"].dump());
  if (!problem.empty()) fail(problem);

  // Phase 2: every rank writes its shard; rank 0 also the replicated tensors and extra files.
  status = json::object();
  try {
    const std::map<std::string, std::string> file_meta = {
        {"format", kCheckpointFormat}, {"step", std::to_string(c.step)}, {"world_size", std::to_string(world)}};
    json files = json::array();
    const std::string shard = shard_name(rank, world);
    auto shard_meta = file_meta;
    shard_meta["rank"] = std::to_string(rank);
    save_safetensors(join(tmp, shard), c.sharded, shard_meta);
    files.push_back(describe_file(tmp, shard, rank, /*safetensors=*/true));
    if (rank == 0) {
      save_safetensors(join(tmp, kReplicated), c.replicated, file_meta);
      files.push_back(describe_file(tmp, kReplicated, -1, /*safetensors=*/true));
      for (const auto& [extra, writer] : c.rank0_files) {
        const std::string path = join(tmp, extra);
        try {
          writer(path);
        } catch (...) {
          throw Error(fmt::format("the writer of '{}' failed: {}", path, describe_exception()), TRUSTEP_ORIGIN);
        }
        files.push_back(describe_file(tmp, extra, -1, ends_with(extra, ".safetensors")));
      }
    }
    status["files"] = std::move(files);
  } catch (...) {
    status["error"] = describe_exception();
  }
  all = exchange(comm, status, "checkpoint.write");
  problem = gathered_errors(all);
  std::map<std::string, int> owner;  // sharded tensor -> rank
  if (problem.empty())
    for (int r = 0; r < world && problem.empty(); ++r)
      for (const json& f : all[r]["files"])
        if (f["rank"].get<int>() >= 0)
          for (const json& t : f["tensors"]) {
            const auto [it, fresh] = owner.emplace(t.get<std::string>(), r);
            if (!fresh) {
              problem = fmt::format("sharded tensor '{}' is saved by rank {} and by rank {} (names must be unique "
                                    "across ranks)",
                                    it->first, it->second, r);
              break;
            }
          }
  if (!problem.empty()) fail(problem);

  // Phase 3: rank 0 writes the manifest and moves the directory into place, then `latest`.
  status = json::object();
  if (rank == 0) {
    enum class Placed { kNo, kFresh, kExchanged, kMovedAside } placed = Placed::kNo;
    const std::string aside = join(root, ".old-" + name);
    try {
      json files = json::array();
      for (int r = 0; r < world; ++r)
        for (const json& f : all[r]["files"]) files.push_back(f);
      json manifest = {{"format", kCheckpointFormat}, {"version", kCheckpointVersion}, {"step", c.step},
                       {"world_size", world},         {"checksum", kChecksum},         {"meta", c.meta},
                       {"files", std::move(files)}};
      write_file_atomic(join(tmp, kManifest), manifest.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
      fsync_path(tmp, /*directory=*/true);
      struct stat st{};
      if (::stat(final_dir.c_str(), &st) != 0) {
        TRUSTEP_CHECK(::rename(tmp.c_str(), final_dir.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, final_dir,
                      errno_text());
        placed = Placed::kFresh;
      } else if (exchange_paths(tmp, final_dir)) {
        placed = Placed::kExchanged;  // tmp now holds the replaced checkpoint
      } else {
        TRUSTEP_CHECK(errno == EINVAL || errno == ENOSYS || errno == ENOTSUP, "cannot exchange '{}' and '{}': {}", tmp,
                      final_dir, errno_text());
        remove_quietly(aside);
        TRUSTEP_CHECK(::rename(final_dir.c_str(), aside.c_str()) == 0, "cannot rename '{}' to '{}': {}", final_dir,
                      aside, errno_text());
        placed = Placed::kMovedAside;
        TRUSTEP_CHECK(::rename(tmp.c_str(), final_dir.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, final_dir,
                      errno_text());
      }
      fsync_path(root, /*directory=*/true);
      write_file_atomic(latest, name + "\n");
      fsync_path(root, /*directory=*/true);
    } catch (...) {
      status["error"] = describe_exception();
      // Put back what was there before; the failure handler then removes the temporary directory.
      bool restored = true;
      if (placed == Placed::kFresh) restored = ::rename(final_dir.c_str(), tmp.c_str()) == 0;
      if (placed == Placed::kExchanged) restored = exchange_paths(tmp, final_dir);
      if (placed == Placed::kMovedAside) {
        struct stat st{};
        if (::stat(final_dir.c_str(), &st) == 0) restored = ::rename(final_dir.c_str(), tmp.c_str()) == 0;
        restored = restored && ::rename(aside.c_str(), final_dir.c_str()) == 0;
      }
      if (!restored) log::error("checkpoint: could not restore '{}' after a failed save: {}", final_dir, errno_text());
    }
    if (!status.contains("error")) {
      if (placed == Placed::kExchanged) remove_quietly(tmp);
      if (placed == Placed::kMovedAside) remove_quietly(aside);
      if (options.keep_last > 0) prune(root, name, options.keep_last);
    }
  }
  all = exchange(comm, status, "checkpoint.commit");
  problem = gathered_errors(all);
  if (!problem.empty()) fail(problem);
  return final_dir;
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

const json& field(const json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  TRUSTEP_CHECK(it != obj.end(), "{} has no \"{}\"", where, key);
  return *it;
}

int64_t int_field(const json& obj, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  const json& v = field(obj, key, where);
  TRUSTEP_CHECK(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)),
                "{}: \"{}\" must be an integer in [{}, {}], got {}", where, key, lo, hi, v.dump());
  const int64_t x = v.get<int64_t>();
  TRUSTEP_CHECK(x >= lo && x <= hi, "{}: \"{}\" must be an integer in [{}, {}], got {}", where, key, lo, hi, x);
  return x;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path, bool verify_checksums) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  TRUSTEP_CHECK(fs::exists(st), "checkpoint '{}': no such directory", path);
  TRUSTEP_CHECK(fs::is_directory(st), "checkpoint '{}': not a directory", path);

  Checkpoint ck;
  ck.dir_ = path;
  if (!fs::exists(join(path, kManifest), ec)) {
    const std::string latest = join(path, kLatest);
    TRUSTEP_CHECK(fs::exists(latest, ec),
                  "'{}' is not a checkpoint: it holds neither manifest.json (a step directory) nor 'latest' (a "
                  "checkpoint root)",
                  path);
    std::string name = read_text(latest, "checkpoint 'latest' file");
    name.erase(name.find_last_not_of(" \t\r\n") + 1);
    name.erase(0, name.find_first_not_of(" \t\r\n"));
    TRUSTEP_CHECK(plain_name(name), "checkpoint root '{}': '{}' holds '{}', not a step directory name", path, latest,
                  name);
    ck.dir_ = join(path, name);
    TRUSTEP_CHECK(fs::is_directory(ck.dir_, ec), "checkpoint root '{}': '{}' names '{}', which does not exist", path,
                  latest, ck.dir_);
    TRUSTEP_CHECK(fs::exists(join(ck.dir_, kManifest), ec),
                  "checkpoint '{}' (named by '{}'): no manifest.json, not a complete checkpoint", ck.dir_, latest);
  }

  const std::string manifest_path = join(ck.dir_, kManifest);
  const std::string where = fmt::format("checkpoint manifest '{}'", manifest_path);
  json m;
  try {
    m = json::parse(read_text(manifest_path, "checkpoint manifest"));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: bad JSON: {}", where, e.what()), TRUSTEP_ORIGIN);
  }
  TRUSTEP_CHECK(m.is_object(), "{}: must be a JSON object, got {}", where, m.type_name());
  const json& format = field(m, "format", where);
  TRUSTEP_CHECK(format == kCheckpointFormat, "{}: format is {}, expected \"{}\"", where, format.dump(),
                kCheckpointFormat);
  const json& version = field(m, "version", where);
  TRUSTEP_CHECK(version == kCheckpointVersion, "{}: version {} is not supported (this build reads version {})", where,
                version.dump(), kCheckpointVersion);
  const json& checksum = field(m, "checksum", where);
  TRUSTEP_CHECK(checksum == kChecksum, "{}: checksum {} is not supported (expected \"{}\")", where, checksum.dump(),
                kChecksum);
  ck.step_ = int_field(m, "step", where, 0, INT64_MAX);
  ck.world_size_ = static_cast<int>(int_field(m, "world_size", where, 1, 1 << 24));
  ck.meta_ = field(m, "meta", where);
  const json& files = field(m, "files", where);
  TRUSTEP_CHECK(files.is_array(), "{}: \"files\" must be an array, got {}", where, files.type_name());

  std::set<std::string> names;
  std::vector<int> shards_of_rank(static_cast<size_t>(ck.world_size_), 0);
  for (size_t i = 0; i < files.size(); ++i) {
    const json& f = files[i];
    const std::string fwhere = fmt::format("{}: files[{}]", where, i);
    TRUSTEP_CHECK(f.is_object(), "{} must be an object, got {}", fwhere, f.dump());
    const json& name = field(f, "name", fwhere);
    TRUSTEP_CHECK(name.is_string() && plain_name(name.get<std::string>()), "{}: \"name\" must be a plain file name, got {}",
                  fwhere, name.dump());
    CheckpointFile cf;
    cf.name = name.get<std::string>();
    TRUSTEP_CHECK(names.insert(cf.name).second, "{}: file '{}' is listed twice", where, cf.name);
    cf.bytes = static_cast<uint64_t>(int_field(f, "bytes", fwhere, 0, INT64_MAX));
    cf.crc32 = static_cast<uint32_t>(int_field(f, "crc32", fwhere, 0, UINT32_MAX));
    cf.rank = static_cast<int>(int_field(f, "rank", fwhere, -1, ck.world_size_ - 1));
    if (f.contains("tensors")) {
      const json& t = f["tensors"];
      TRUSTEP_CHECK(t.is_array() && std::all_of(t.begin(), t.end(), [](const json& x) { return x.is_string(); }),
                    "{}: \"tensors\" must be an array of names", fwhere);
      cf.tensors = t.get<std::vector<std::string>>();
    }
    if (cf.rank >= 0) {
      ++shards_of_rank[static_cast<size_t>(cf.rank)];
      for (const std::string& t : cf.tensors) {
        const auto [it, fresh] = ck.shard_index_.emplace(t, ck.files_.size());
        // it->second == files_.size(): listed twice by this very file (not yet in files_).
        TRUSTEP_CHECK(fresh, "{}: sharded tensor '{}' is listed in '{}' and in '{}'", where, t,
                      it->second < ck.files_.size() ? ck.files_[it->second].name : cf.name, cf.name);
      }
    }
    ck.files_.push_back(std::move(cf));
  }
  for (int r = 0; r < ck.world_size_; ++r)
    TRUSTEP_CHECK(shards_of_rank[static_cast<size_t>(r)] == 1, "{}: lists {} shard files of rank {} (expected 1)", where,
                  shards_of_rank[static_cast<size_t>(r)], r);

  for (const CheckpointFile& f : ck.files_) {
    const std::string p = join(ck.dir_, f.name);
    struct stat fst{};
    TRUSTEP_CHECK(::stat(p.c_str(), &fst) == 0, "checkpoint '{}': file '{}' listed in the manifest is missing: {}",
                  ck.dir_, p, errno_text());
    TRUSTEP_CHECK(S_ISREG(fst.st_mode), "checkpoint '{}': '{}' is not a regular file", ck.dir_, p);
    TRUSTEP_CHECK(static_cast<uint64_t>(fst.st_size) == f.bytes,
                  "checkpoint '{}': file '{}' has {} bytes but the manifest says {} (truncated or overwritten)",
                  ck.dir_, p, fst.st_size, f.bytes);
    if (!verify_checksums) continue;
    const FileSum sum = file_sum(p);
    TRUSTEP_CHECK(sum.bytes == f.bytes, "checkpoint '{}': file '{}' changed size while being read", ck.dir_, p);
    TRUSTEP_CHECK(sum.crc == f.crc32, "checkpoint '{}': file '{}' is corrupted: crc32 {:08x}, the manifest says {:08x}",
                  ck.dir_, p, sum.crc, f.crc32);
  }
  return ck;
}

TensorMap Checkpoint::load_replicated(const std::function<bool(const std::string&)>& want) const {
  return load_safetensors(file(kReplicated), want).tensors;
}

TensorMap Checkpoint::load_sharded(const std::vector<std::string>& names) const {
  std::map<size_t, std::set<std::string>> by_file;
  std::vector<std::string> missing;
  for (const std::string& n : names) {
    const auto it = shard_index_.find(n);
    if (it == shard_index_.end())
      missing.push_back(n);
    else
      by_file[it->second].insert(n);
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 20);
    throw Error(fmt::format("checkpoint '{}': {} sharded tensor(s) are in no shard: '{}'{} ({} sharded tensors in {} "
                            "shards)",
                            dir_, missing.size(),
                            fmt::join(missing.begin(), missing.begin() + static_cast<std::ptrdiff_t>(shown), "', '"),
                            shown < missing.size() ? ", ..." : "", shard_index_.size(), world_size_),
                TRUSTEP_ORIGIN);
  }
  TensorMap out;
  for (const auto& entry : by_file) {
    const std::set<std::string>& wanted = entry.second;  // not a structured binding: clang 14 cannot capture those
    const std::string path = join(dir_, files_[entry.first].name);
    TensorMap got = load_safetensors(path, [&](const std::string& n) { return wanted.count(n) > 0; }).tensors;
    for (const std::string& n : wanted) {
      const auto it = got.find(n);
      TRUSTEP_CHECK(it != got.end(), "checkpoint '{}': shard '{}' holds no tensor '{}' although the manifest lists it",
                    dir_, path, n);
      out.emplace(n, std::move(it->second));
    }
  }
  return out;
}

std::vector<std::string> Checkpoint::sharded_names() const {
  std::vector<std::string> out;
  out.reserve(shard_index_.size());
  for (const auto& [n, index] : shard_index_) out.push_back(n);
  return out;
}

std::string Checkpoint::file(const std::string& name) const {
  for (const CheckpointFile& f : files_)
    if (f.name == name) return join(dir_, f.name);
  std::vector<std::string> listed;
  for (const CheckpointFile& f : files_) listed.push_back(f.name);
  throw Error(fmt::format("checkpoint '{}': no file '{}' in the manifest (files: {})", dir_, name,
                          fmt::join(listed, ", ")),
              TRUSTEP_ORIGIN);
}

}  // namespace trustep::train
