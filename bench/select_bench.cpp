#include "bench/select_bench.h"
#include "bench/report.h"

#include "core/error.h"
#include "core/log.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/softmax.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

namespace trustep::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using routing::SelectorMode;

constexpr int64_t kContexts = 16;        // rows of the benchmark's trust table
constexpr double kTrustedShare = 0.7;    // share of tokens whose context is trusted (trust-first)
constexpr const char* kScript = "bench/baselines/prototype_select.py";

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> values;
  for (const auto& word : parse_word_list(text, option)) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TRUSTEP_CHECK_AS(OptionError, used == word.size() && v > 0,
                     "invalid value '{}' for option '{}': '{}' is not a positive integer", text, option, word);
    values.push_back(v);
  }
  return values;
}

bool is_executable(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec) && ::access(path.c_str(), X_OK) == 0;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The last `lines` non-empty lines of a text file, joined with " | " (error output for a reason).
std::string last_lines(const fs::path& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) all.push_back(line);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i)
    out += (out.empty() ? "" : " | ") + all[i];
  return out.empty() ? "no error output" : out;
}

// Runs a shell command, returns (exit status, stdout); stderr goes to `stderr_file`.
std::pair<int, std::string> run_command(const std::string& command, const fs::path& stderr_file) {
  const std::string full = command + " 2>" + shell_quote(stderr_file.string());
  FILE* pipe = ::popen(full.c_str(), "r");
  if (!pipe) return {-1, ""};
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The last line of `out` that parses as a JSON object.
std::optional<nlohmann::json> last_json_line(const std::string& out) {
  std::istringstream in(out);
  std::optional<nlohmann::json> found;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] != '{') continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) found = j;
  }
  return found;
}

// A scratch directory removed when it goes out of scope.
struct TempDir {
  fs::path path;
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = (fs::path(base && *base ? base : "/tmp") / "trustep-select-XXXXXX").string();
    TRUSTEP_CHECK(::mkdtemp(tmpl.data()) != nullptr, "bench select: cannot create a directory from '{}': {}", tmpl,
                  std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string format_rate(std::optional<double> v) {
  if (!v) return "-";
  return fmt::format("{:.4g}", *v);
}
std::string format_speedup(std::optional<double> v) {
  if (!v) return "-";
  return *v >= 100 ? fmt::format("{:.0f}x", *v) : fmt::format("{:.2f}x", *v);
}
nlohmann::json json_or_null(std::optional<double> v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

// Benchmark inputs for one (T, E), generated on the CPU from a fixed seed, then moved.
struct Inputs {
  PrototypeInputs proto;           // CPU: logits, trust table, contexts, trusted
  routing::SelectorInputs select;  // on the benchmark device
};

Inputs make_inputs(int64_t T, int64_t E, c10::Device device) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(T * 1000003 + E));
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  Inputs in;
  in.proto.logits = at::randn({T, E}, gen, f32);
  in.proto.trust_table = at::rand({kContexts, E}, gen, f32);
  in.proto.context = at::randint(0, kContexts, {T}, gen, at::TensorOptions().dtype(at::kLong));
  in.proto.trusted = at::rand({T}, gen, f32) < kTrustedShare;
  in.select.probs = at::softmax(in.proto.logits, 1).to(device);
  in.select.trust = in.proto.trust_table.index_select(0, in.proto.context).to(device);  // [T, E]
  in.select.trusted = in.proto.trusted.to(device);
  return in;
}

std::string python_reason(const std::string& python, const std::string& script) {
  if (python.empty()) return "no Python: pass --python (default <repo>/.venv/bin/python was not found)";
  if (!is_executable(python)) return fmt::format("'{}' is not an executable file", python);
  if (script.empty()) return fmt::format("{} not found (set TRUSTEP_SOURCE_DIR to the repository)", kScript);
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

void add_select_bench_options(po::options_description& desc, SelectBenchArgs& a) {
  desc.add_options()
      ("tokens", po::value(&a.tokens)->default_value(a.tokens), "tokens per point (list; k = 1024: 4096,64k)")
      ("experts", po::value(&a.experts)->default_value(a.experts), "number of experts E (list)")
      ("top-k", po::value(&a.top_k)->default_value(a.top_k), "experts per token k (list; k > E is skipped)")
      ("modes", po::value(&a.modes)->default_value(a.modes), "selector modes (list): router, blend, trust-first")
      ("alpha", po::value(&a.alpha)->default_value(a.alpha), "blend: score = alpha·p + (1 − alpha)·trust, in [0, 1]")
      ("epsilon", po::value(&a.epsilon)->default_value(a.epsilon, "0.05"), "trust-first: exploration probability, in [0, 1]")
      ("iters", po::value(&a.iters)->default_value(a.iters), "timed iterations per point (median)")
      ("warmup", po::value(&a.warmup)->default_value(a.warmup), "untimed iterations per point")
      ("impl", po::value(&a.impl)->default_value(a.impl), "selector implementation: auto, torch, fused")
      ("baselines", po::value(&a.baselines)->default_value(a.baselines),
       "baselines (list): prototype, host-loop; or none")
      ("prototype-max-tokens", po::value(&a.prototype_max_tokens)->default_value(a.prototype_max_tokens),
       "time the Python prototype on at most this many tokens of each point (rates are per token)")
      ("python", po::value(&a.python), "Python with numpy and torch for the prototype (default <repo>/.venv/bin/python)")
      ("json", po::value(&a.json), "write machine-readable records to FILE (rank 0)");
}

SelectBenchOptions validate(const SelectBenchArgs& a) {
  SelectBenchOptions o;
  o.tokens = parse_size_list(a.tokens, "--tokens");
  o.experts = parse_int_list(a.experts, "--experts");
  o.top_k = parse_int_list(a.top_k, "--top-k");
  for (const auto& m : parse_word_list(a.modes, "--modes")) o.modes.push_back(routing::parse_mode(m, "--modes"));
  TRUSTEP_CHECK_AS(OptionError, a.alpha >= 0 && a.alpha <= 1,
                   "invalid value '{}' for option '--alpha': must be in [0, 1]", a.alpha);
  TRUSTEP_CHECK_AS(OptionError, a.epsilon >= 0 && a.epsilon <= 1,
                   "invalid value '{}' for option '--epsilon': must be in [0, 1]", a.epsilon);
  TRUSTEP_CHECK_AS(OptionError, a.iters > 0, "invalid value '{}' for option '--iters': must be > 0", a.iters);
  TRUSTEP_CHECK_AS(OptionError, a.warmup >= 0, "invalid value '{}' for option '--warmup': must be >= 0", a.warmup);
  o.alpha = a.alpha;
  o.epsilon = a.epsilon;
  o.iters = a.iters;
  o.warmup = a.warmup;
  if (a.impl == "auto") {
    o.impl = routing::SelectorImpl::kAuto;
  } else if (a.impl == "torch") {
    o.impl = routing::SelectorImpl::kTorchOps;
  } else if (a.impl == "fused") {
    o.impl = routing::SelectorImpl::kFused;
  } else {
    throw OptionError(fmt::format("invalid value '{}' for option '--impl': expected auto, torch or fused", a.impl),
                      TRUSTEP_ORIGIN);
  }
  o.impl_name = a.impl;
  const auto baselines = parse_word_list(a.baselines, "--baselines");
  o.prototype = o.host_loop = false;
  for (const auto& b : baselines) {
    if (b == "prototype") {
      o.prototype = true;
    } else if (b == "host-loop") {
      o.host_loop = true;
    } else if (b == "none") {
      TRUSTEP_CHECK_AS(OptionError, baselines.size() == 1,
                       "invalid value '{}' for option '--baselines': 'none' cannot be combined with others",
                       a.baselines);
    } else {
      throw OptionError(fmt::format("invalid value '{}' for option '--baselines': '{}' is not prototype, host-loop "
                                    "or none",
                                    a.baselines, b),
                        TRUSTEP_ORIGIN);
    }
  }
  TRUSTEP_CHECK_AS(OptionError, a.prototype_max_tokens > 0,
                   "invalid value '{}' for option '--prototype-max-tokens': must be > 0", a.prototype_max_tokens);
  o.prototype_max_tokens = a.prototype_max_tokens;

  const std::string root = find_repo_root();
  if (!root.empty()) o.script = (fs::path(root) / kScript).string();
  if (!a.python.empty()) {
    TRUSTEP_CHECK_AS(OptionError, is_executable(a.python),
                     "invalid value '{}' for option '--python': not an executable file", a.python);
    o.python = a.python;
  } else if (!root.empty() && is_executable((fs::path(root) / ".venv/bin/python").string())) {
    o.python = (fs::path(root) / ".venv/bin/python").string();
  }
  check_json_path(a.json);
  o.json = a.json;
  return o;
}

std::string find_repo_root() {
  auto holds_script = [](const fs::path& dir) {
    std::error_code ec;
    return fs::is_regular_file(dir / kScript, ec);
  };
  if (const char* env = std::getenv("TRUSTEP_SOURCE_DIR"); env && *env && holds_script(env))
    return fs::path(env).lexically_normal().string();
  std::vector<fs::path> starts;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) starts.push_back(exe.parent_path());
  const fs::path cwd = fs::current_path(ec);
  if (!ec) starts.push_back(cwd);
  for (fs::path dir : starts) {
    for (; !dir.empty(); dir = dir.parent_path()) {
      if (holds_script(dir)) return dir.string();
      if (dir == dir.root_path()) break;
    }
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Host round-trip baseline

HostLoopSelection host_loop_select(const routing::SelectorConfig& config, const routing::SelectorInputs& in) {
  const c10::Device device = in.probs.device();
  const int64_t T = in.probs.size(0), E = config.experts, k = config.top_k;
  const bool blend = config.mode == SelectorMode::kBlend;
  const bool trust_first = config.mode == SelectorMode::kTrustFirst;

  // 1. To the host: explicit copies, even of CPU tensors, as the round trip makes them.
  const auto to_host = [](const at::Tensor& t, at::ScalarType dtype) {
    return t.detach().to(at::kCPU, dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
  };
  const at::Tensor probs_h = to_host(in.probs, at::kFloat);
  const at::Tensor trust_h = blend || trust_first ? to_host(in.trust, at::kFloat) : at::Tensor();
  const at::Tensor trusted_h = trust_first ? to_host(in.trusted, at::kBool) : at::Tensor();
  const float* P = probs_h.data_ptr<float>();
  const float* R = trust_h.defined() ? trust_h.data_ptr<float>() : nullptr;
  const bool* trusted = trusted_h.defined() ? trusted_h.data_ptr<bool>() : nullptr;

  // 2. One thread, token by token, into host buffers.
  std::vector<int64_t> experts(T * k), load(E, 0), idx(E);
  std::vector<float> scores(T * k), weights(T * k), blended(E);
  std::mt19937_64 rng(config.seed);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const float a = static_cast<float>(config.alpha), b = static_cast<float>(1.0 - config.alpha);
  const float epsilon = static_cast<float>(config.epsilon);
  for (int64_t t = 0; t < T; ++t) {
    const float* p = P + t * E;
    const float* s = p;
    if (blend) {
      const float* r = R + t * E;
      for (int64_t e = 0; e < E; ++e) blended[e] = p[e] * a + r[e] * b;
      s = blended.data();
    } else if (trust_first) {
      const bool explore = epsilon > 0 && uniform(rng) < epsilon;
      if (trusted[t] && !explore) s = R + t * E;
    }
    std::iota(idx.begin(), idx.end(), int64_t{0});
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [s](int64_t x, int64_t y) { return s[x] > s[y] || (s[x] == s[y] && x < y); });
    float total = 0;
    for (int64_t j = 0; j < k; ++j) total += p[idx[j]];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = idx[j];
      experts[t * k + j] = e;
      scores[t * k + j] = s[e];
      weights[t * k + j] = k == 1 ? p[e] : total > 0 ? p[e] / total : 0.0f;  // top-1: p itself
      ++load[e];
    }
  }

  // 3. Back into tensors on the inputs' device.
  const auto back = [&](void* data, std::vector<int64_t> sizes, at::ScalarType dtype) {
    const at::Tensor h = at::from_blob(data, sizes, at::TensorOptions().dtype(dtype));
    return device.is_cpu() ? h.clone() : h.to(device);
  };
  HostLoopSelection r;
  r.experts = back(experts.data(), {T, k}, at::kLong);
  r.scores = back(scores.data(), {T, k}, at::kFloat);
  r.weights = back(weights.data(), {T, k}, at::kFloat);
  r.load = back(load.data(), {E}, at::kLong);
  return r;
}

// ---------------------------------------------------------------------------------------------
// .npy

void write_npy(const std::string& path, const at::Tensor& tensor) {
  const at::Tensor t = tensor.detach().cpu().contiguous();
  std::string descr;
  switch (t.scalar_type()) {
    case at::kFloat: descr = "<f4"; break;
    case at::kLong: descr = "<i8"; break;
    case at::kBool: descr = "|b1"; break;
    default: TRUSTEP_CHECK(false, "write_npy: unsupported dtype {}", c10::toString(t.scalar_type()));
  }
  std::string shape;
  for (const int64_t d : t.sizes()) shape += std::to_string(d) + ", ";
  if (t.dim() > 1) shape.resize(shape.size() - 2);  // "(T, E)"; one dimension keeps "(T,)"
  if (t.dim() == 1) shape.pop_back();
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape);
  const size_t total = 10 + header.size() + 1;  // magic, version, length, header, '\n'
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  TRUSTEP_CHECK(out.good(), "write_npy: cannot write '{}'", path);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_le, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  TRUSTEP_CHECK(out.good(), "write_npy: writing '{}' failed", path);
}

at::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRUSTEP_CHECK(in.good(), "read_npy: cannot open '{}'", path);
  char magic[10];
  in.read(magic, 10);
  TRUSTEP_CHECK(in.good() && std::memcmp(magic, "\x93NUMPY", 6) == 0 && magic[6] == 1,
                "read_npy: '{}' is not a version 1 .npy file", path);
  const size_t len = static_cast<unsigned char>(magic[8]) | (static_cast<size_t>(static_cast<unsigned char>(magic[9])) << 8);
  std::string header(len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(len));
  auto field = [&](const std::string& key) {
    const size_t at = header.find("'" + key + "':");
    TRUSTEP_CHECK(at != std::string::npos, "read_npy: '{}' has no {}", path, key);
    return header.substr(at + key.size() + 3);
  };
  at::ScalarType dtype;
  const std::string descr = field("descr");
  if (descr.find("'<f4'") == 1) {
    dtype = at::kFloat;
  } else if (descr.find("'<i8'") == 1) {
    dtype = at::kLong;
  } else if (descr.find("'|b1'") == 1) {
    dtype = at::kBool;
  } else {
    TRUSTEP_CHECK(false, "read_npy: '{}' has an unsupported dtype ({})", path, descr.substr(0, 8));
  }
  TRUSTEP_CHECK(field("fortran_order").find("False") == 1, "read_npy: '{}' is in Fortran order", path);
  const std::string shape_text = field("shape");
  const size_t open = shape_text.find('('), close = shape_text.find(')');
  std::vector<int64_t> shape;
  std::stringstream ss(shape_text.substr(open + 1, close - open - 1));
  for (std::string item; std::getline(ss, item, ',');)
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  TRUSTEP_CHECK(in.good() || t.nbytes() == 0, "read_npy: '{}' is truncated", path);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Prototype baseline

void write_prototype_inputs(const std::string& dir, const PrototypeInputs& in, int64_t tokens) {
  const int64_t n = std::min(tokens, in.logits.size(0));
  write_npy((fs::path(dir) / "logits.npy").string(), in.logits.narrow(0, 0, n));
  write_npy((fs::path(dir) / "trust_table.npy").string(), in.trust_table);
  write_npy((fs::path(dir) / "context.npy").string(), in.context.narrow(0, 0, n));
  write_npy((fs::path(dir) / "trusted.npy").string(), in.trusted.narrow(0, 0, n));
}

std::string probe_prototype(const std::string& python, const std::string& script, std::string* versions) {
  if (auto why = python_reason(python, script); !why.empty()) return why;
  TempDir tmp;
  const auto [rc, out] = run_command(shell_quote(python) + " " + shell_quote(script) + " --probe", tmp.path / "err");
  const auto j = last_json_line(out);
  if (rc != 0 || !j)
    return fmt::format("'{} {} --probe' failed (exit {}): {}", python, script, rc, last_lines(tmp.path / "err", 1));
  if (versions)
    *versions = fmt::format("Python {}, torch {}, numpy {}", j->value("python", "?"), j->value("torch", "?"),
                            j->value("numpy", "?"));
  return "";
}

PrototypeResult run_prototype(const PrototypeRequest& r) {
  PrototypeResult result;
  if (auto why = python_reason(r.python, r.script); !why.empty()) {
    result.reason = why;
    return result;
  }
  const fs::path dir(r.dir);
  std::string command = fmt::format(
      "{} {} --dir {} --mode {} --alpha {} --epsilon {} --top-k {} --tokens {} --iters {} --warmup {} --seed {} "
      "--device {}",
      shell_quote(r.python), shell_quote(r.script), shell_quote(r.dir), r.mode, r.alpha, r.epsilon, r.top_k, r.tokens,
      r.iters, r.warmup, r.seed, r.device);
  if (r.write_selections) command += " --write-selections";
  const auto [rc, out] = run_command(command, dir / "stderr.txt");
  const auto j = last_json_line(out);
  if (rc != 0 || !j || !j->contains("tokens") || !j->contains("seconds")) {
    result.reason = fmt::format("prototype exited with {}{}: {}", rc, j ? "" : " and no JSON line",
                                last_lines(dir / "stderr.txt", 3));
    return result;
  }
  result.tokens = (*j)["tokens"].get<int64_t>();
  result.seconds = (*j)["seconds"].get<double>();
  if (r.write_selections) {
    result.experts = read_npy((dir / "experts.npy").string());
    result.weights = read_npy((dir / "weights.npy").string());
  }
  result.ok = true;
  return result;
}

// ---------------------------------------------------------------------------------------------
// The benchmark

int run_select_bench(comm::Communicator& comm, const SelectBenchOptions& o) {
  const bool root = comm.rank() == 0;
  const bool on_gpu = std::string(comm.name()) == "nccl";
  const c10::Device device = on_gpu ? c10::Device(c10::DeviceType::CUDA) : c10::Device(c10::DeviceType::CPU);
  const int threads = at::get_num_threads();

  // Prototype availability, decided once (rank 0 runs it; the others skip it).
  std::string proto_reason, proto_versions;
  std::optional<TempDir> workdir;
  if (o.prototype && root) {
    proto_reason = probe_prototype(o.python, o.script, &proto_versions);
    if (proto_reason.empty()) workdir.emplace();
    else log::warn("bench select: prototype baseline unavailable: {}", proto_reason);
  }
  const bool run_proto = o.prototype && root && proto_reason.empty();

  if (root) {
    fmt::print("trustep bench select: backend {}, {} rank(s), device {}, impl {}, alpha {}, epsilon {}, "
               "{} iters (median), {} warmup\n",
               comm.name(), comm.size(), device.str(), o.impl_name, o.alpha, o.epsilon, o.iters, o.warmup);
    fmt::print("  trustep   : routing::Selector::select ({} intra-op thread(s))\n", threads);
    if (o.host_loop)
      fmt::print("  host-loop : copy to host, per-token blend + std::partial_sort + renormalise, copy back "
                 "(1 thread)\n");
    if (o.prototype)
      fmt::print("  prototype : {}\n",
                 run_proto ? fmt::format("{} via {} ({}), on min(T, {}) tokens, rates per token", o.script,
                                         o.python, proto_versions, o.prototype_max_tokens)
                           : "unavailable: " + proto_reason);
    fmt::print("{:>6} {:>4} {:>3} {:<11} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "T", "E", "k", "mode",
               "trustep_tok/s", "proto_tok/s", "host_tok/s", "vs_proto", "vs_host");
  }

  nlohmann::json records = nlohmann::json::array(), skipped = nlohmann::json::array();
  for (const int64_t T : o.tokens) {
    for (const int64_t E : o.experts) {
      std::optional<Inputs> inputs;
      int64_t proto_tokens = 0;
      for (const int64_t k : o.top_k) {
        for (const SelectorMode mode : o.modes) {
          if (k > E) {
            if (root) {
              fmt::print("{:>6} {:>4} {:>3} {:<11} skipped: k > E\n", T, E, k, routing::mode_name(mode));
              skipped.push_back({{"tokens", T}, {"experts", E}, {"top_k", k}, {"mode", routing::mode_name(mode)},
                                 {"reason", "k > E"}});
            }
            continue;
          }
          if (!inputs) {
            inputs = make_inputs(T, E, device);
            if (run_proto) {
              proto_tokens = std::min(T, o.prototype_max_tokens);
              write_prototype_inputs(workdir->path.string(), inputs->proto, proto_tokens);
            }
          }
          routing::SelectorConfig config;
          config.mode = mode;
          config.experts = E;
          config.top_k = k;
          config.alpha = o.alpha;
          config.epsilon = o.epsilon;
          config.seed = 1234;
          routing::Selector selector(config, device);
          const routing::SelectorInputs& in = inputs->select;

          std::vector<double> ours_s, host_s;
          routing::Selection last;
          HostLoopSelection last_host;
          for (int i = 0; i < o.warmup + o.iters; ++i) {
            double t_ours = 0, t_host = 0;
            for (int side = 0; side < (o.host_loop ? 2 : 1); ++side) {  // alternate who goes first
              const bool ours_now = !o.host_loop || ((side == 0) == (i % 2 == 0));
              const auto t0 = Clock::now();
              if (ours_now) {
                last = selector.select(in, o.impl);
                comm.synchronize();
              } else {
                last_host = host_loop_select(config, in);
                comm.synchronize();
              }
              const double s = std::chrono::duration<double>(Clock::now() - t0).count();
              (ours_now ? t_ours : t_host) = s;
            }
            if (i >= o.warmup) {
              ours_s.push_back(t_ours);
              host_s.push_back(t_host);
            }
          }
          const double ours = static_cast<double>(T) / median(ours_s);
          std::optional<double> host, proto;
          if (o.host_loop) {
            host = static_cast<double>(T) / median(host_s);
            if (mode != SelectorMode::kTrustFirst && !at::equal(last.experts.cpu(), last_host.experts.cpu()))
              log::warn("bench select: T={} E={} k={} {}: host loop and trustep selected different experts", T, E,
                        k, routing::mode_name(mode));
          }
          if (run_proto) {
            PrototypeRequest req;
            req.python = o.python;
            req.script = o.script;
            req.dir = workdir->path.string();
            req.mode = routing::mode_name(mode);
            req.alpha = o.alpha;
            req.epsilon = o.epsilon;
            req.top_k = k;
            req.tokens = proto_tokens;
            req.iters = o.iters;
            req.warmup = o.warmup;
            req.device = on_gpu ? "cuda" : "cpu";
            const PrototypeResult pr = run_prototype(req);
            if (pr.ok && pr.seconds > 0) {
              proto = static_cast<double>(pr.tokens) / pr.seconds;
            } else {
              log::warn("bench select: T={} E={} k={} {}: prototype failed: {}", T, E, k, routing::mode_name(mode),
                        pr.reason);
            }
          }
          const std::optional<double> vs_proto = proto ? std::optional<double>(ours / *proto) : std::nullopt;
          const std::optional<double> vs_host = host ? std::optional<double>(ours / *host) : std::nullopt;
          if (root) {
            fmt::print("{:>6} {:>4} {:>3} {:<11} {:>12} {:>12} {:>12} {:>12} {:>12}\n", T, E, k,
                       routing::mode_name(mode), format_rate(ours), format_rate(proto), format_rate(host),
                       format_speedup(vs_proto), format_speedup(vs_host));
            std::fflush(stdout);
            records.push_back({{"tokens", T},
                               {"experts", E},
                               {"top_k", k},
                               {"mode", routing::mode_name(mode)},
                               {"impl", o.impl_name},
                               {"trustep_tokens_per_s", ours},
                               {"prototype_tokens_per_s", json_or_null(proto)},
                               {"host_loop_tokens_per_s", json_or_null(host)},
                               {"speedup_vs_prototype", json_or_null(vs_proto)},
                               {"speedup_vs_host_loop", json_or_null(vs_host)}});
          }
        }
      }
    }
  }

  if (root && !o.json.empty()) {
    nlohmann::json prototype{{"requested", o.prototype},
                             {"available", run_proto},
                             {"max_tokens", o.prototype_max_tokens},
                             {"python", o.python},
                             {"script", o.script}};
    if (!proto_reason.empty()) prototype["reason"] = proto_reason;
    if (!proto_versions.empty()) prototype["versions"] = proto_versions;
    nlohmann::json doc{
        {"benchmark", "select"},
        {"version", TRUSTEP_VERSION},
        {"backend", comm.name()},
        {"world", comm.size()},
        {"device", device.str()},
        {"trustep_threads", threads},
        {"alpha", o.alpha},
        {"epsilon", o.epsilon},
        {"iters", o.iters},
        {"warmup", o.warmup},
        {"impl", o.impl_name},
        {"prototype", prototype},
        {"host_loop", {{"requested", o.host_loop}, {"threads", 1}}},
        {"speedup_definition", "trustep_tokens_per_s / baseline_tokens_per_s (tokens/s from the median time)"},
        {"skipped", skipped},
        {"records", records}};
    write_json_report(o.json, doc, "select");
  }
  return 0;
}

}  // namespace trustep::bench
