// What the three libFuzzer targets share: a private scratch directory (tmpfs when there is one:
// every input becomes files), file helpers, and the rules of a finding. A finding is an abort
// (libFuzzer saves the input): a broken property (`require`), or any exception escaping the code
// under test that is not trustep::Error, the documented error for bad input.
#pragma once

#include "core/error.h"
#include "core/safetensors.h"

#include <cxxabi.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <typeinfo>

namespace trustep::fuzz {

namespace fs = std::filesystem;

// Under $TRUSTEP_FUZZ_TMP, else /dev/shm, else $TMPDIR; removed when the process exits normally.
inline const fs::path& scratch() {
  static const fs::path dir = [] {
    std::error_code ec;
    const char* chosen = std::getenv("TRUSTEP_FUZZ_TMP");  // scripts/fuzz.sh: a directory it removes
    const fs::path base = chosen && *chosen                                                 ? fs::path(chosen)
                          : fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0 ? fs::path("/dev/shm")
                                                                                             : fs::temp_directory_path();
    std::string tmpl = (base / "trustep-fuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("trustep fuzz: mkdtemp");
      std::abort();
    }
    static const std::string made = tmpl;
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(made, ignored);
    });
    return fs::path(tmpl);
  }();
  return dir;
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "\n==== trustep fuzz finding: %s\n", what.c_str());
  std::abort();
}

inline void require(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

inline void write_file(const fs::path& path, std::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  require(fd >= 0, "harness: cannot create " + path.string());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    require(n > 0, "harness: cannot write " + path.string());
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

inline std::string type_of(const std::exception& e) {
  int status = 0;
  char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name ? name : typeid(e).name();
  std::free(name);
  return out;
}

// The message of the last trustep::Error that `accepts` caught.
inline std::string& last_error() {
  static std::string message;
  return message;
}

// With $TRUSTEP_FUZZ_VERDICT set, prints whether the input was accepted as a whole when it goes out
// of scope (scripts/fuzz.sh checks that the seeds named valid-* are accepted and bad-* are not).
struct Verdict {
  bool accepted = false;
  Verdict() { last_error().clear(); }
  ~Verdict() {
    static const bool on = std::getenv("TRUSTEP_FUZZ_VERDICT") != nullptr;
    if (on) std::fprintf(stderr, "trustep-fuzz verdict: %s%s\n", accepted ? "accepted" : "rejected: ",
                         accepted ? "" : last_error().c_str());
  }
};

// Runs `f` (the code under test, on untrusted input). Returns true when it returned, false when it
// threw trustep::Error; any other exception is a finding, reported with its type and message.
template <typename F>
bool accepts(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const Error& e) {
    last_error() = e.what();
    return false;
  } catch (const std::exception& e) {
    fail(std::string(what) + " threw " + type_of(e) + " (not trustep::Error): " + e.what());
  } catch (...) {
    fail(std::string(what) + " threw a non-std exception");
  }
}

// Runs `f` on input the code under test accepted before (or wrote itself): any exception is a finding.
template <typename F>
void must_succeed(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    fail(std::string(what) + " failed on accepted input: " + type_of(e) + ": " + e.what());
  }
}

inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.const_data_ptr(), b.const_data_ptr(), a.nbytes()) == 0);
}

// The same names, each with the same dtype, shape and bytes.
inline void require_same(const TensorMap& got, const TensorMap& expected, const std::string& what) {
  require(got.size() == expected.size(), what + ": " + std::to_string(got.size()) + " tensors instead of " +
                                             std::to_string(expected.size()));
  for (const auto& [name, t] : expected) {
    const auto it = got.find(name);
    require(it != got.end(), what + ": tensor '" + name + "' is missing");
    require(same_bits(it->second, t), what + ": tensor '" + name + "' differs");
  }
}

}  // namespace trustep::fuzz
