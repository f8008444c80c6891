#include "comm/communicator.h"

#include "comm/wire_header.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/hash.h"

#include <ATen/ops/empty.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <set>

namespace trustep::comm {

Backend parse_backend(const std::string& name, const std::string& option) {
  if (name == "auto") return Backend::kAuto;
  if (name == "mpi") return Backend::kMpi;
  if (name == "nccl") return Backend::kNccl;
  if (name == "self") return Backend::kSelf;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected auto, mpi, nccl or self", name, option),
                    TRUSTEP_ORIGIN);
}

const char* backend_name(Backend backend) {
  switch (backend) {
    case Backend::kAuto: return "auto";
    case Backend::kMpi: return "mpi";
    case Backend::kNccl: return "nccl";
    case Backend::kSelf: return "self";
  }
  return "unknown";
}

struct Communicator::Entered {
  at::Tensor tensor;                 // the conforming (possibly cast) input
  std::vector<int64_t> recv_counts;  // all-to-all only
  OpInfo info;
};

Communicator::Communicator(int rank, int world, const CommOptions& options)
    : rank_(rank), world_(world), options_(options), contracts_(options.policy, rank) {}

Communicator::~Communicator() = default;

void Communicator::start_watchdog() {
  watchdog_ = std::make_unique<Watchdog>(rank_, options_.timeout_s,
                                         [this](const std::string& why) { abort_job(124, why); });
}

Communicator::Entered Communicator::enter(int op_code, const at::Tensor* t, const Contract* contract, int layer,
                                          const std::vector<int64_t>* counts, int64_t arg, const std::string& tag) {
  const auto op = static_cast<CollectiveOp>(op_code);
  HeaderFacts f;
  f.op = op;
  f.seq = ++seq_;
  f.boundary = contract ? contract->boundary : tag;
  f.layer = layer;
  f.policy = static_cast<int64_t>(contracts_.policy());
  f.arg = arg;
  Entered entered;
  if (t) {
    at::Tensor x = *t;
    if (contract) {
      x = contracts_.repair(*contract, x).first;  // what remains wrong travels in the header
      f.declared_dtype = static_cast<int64_t>(to_wire(contract->dtype));
      f.expected_device = contract->device ? static_cast<int64_t>(*contract->device) : -1;
      f.expected_ndim = contract->ndim;
    } else {
      f.declared_dtype = static_cast<int64_t>(to_wire(x.scalar_type()));
    }
    if (op == CollectiveOp::kAllToAllV) f.expected_ndim = 2;
    if (x.defined()) {
      f.actual_dtype = static_cast<int64_t>(to_wire(x.scalar_type()));
      f.actual_device = static_cast<int64_t>(x.device().type());
      f.actual_ndim = x.dim();
      f.contiguous = x.is_contiguous();
      f.rows = op == CollectiveOp::kAllToAllV ? (x.dim() > 0 ? x.size(0) : 0) : x.numel();
      f.row_width = op == CollectiveOp::kAllToAllV ? (x.dim() == 2 ? x.size(1) : 0) : x.numel();
    } else {
      f.actual_ndim = -2;  // "undefined tensor" never matches an expected ndim
    }
    entered.tensor = x;
  }
  if (counts) f.counts = *counts;

  entered.info = OpInfo{op_name(op), f.boundary, f.seq, world_, f.counts};

  std::vector<int64_t> gathered(header_length(world_) * world_);
  {
    auto scope = watchdog_->watch(entered.info);
    const auto row = pack_header(f, world_);
    do_all_gather_i64(row.data(), static_cast<int64_t>(row.size()), gathered.data());
  }
  verify_headers(gathered, world_);
  if (op == CollectiveOp::kAllToAllV) entered.recv_counts = recv_counts_from(gathered, world_, rank_);
  return entered;
}

AllToAllResult Communicator::all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                                          const Contract& contract, int layer, at::Tensor* recv_buffer) {
  Entered e = enter(static_cast<int>(CollectiveOp::kAllToAllV), &send, &contract, layer, &send_counts, 0, "");
  const int64_t rows = std::accumulate(e.recv_counts.begin(), e.recv_counts.end(), int64_t{0});
  const int64_t width = e.tensor.size(1);
  if (recording_)
    exchanges_.push_back({contract.boundary, e.tensor.scalar_type(), e.tensor.device(), width, send_counts});
  at::Tensor recv;
  if (recv_buffer) {
    at::Tensor& buf = *recv_buffer;
    if (!buf.defined() || buf.dim() != 2 || buf.size(1) != width || buf.size(0) < rows ||
        buf.scalar_type() != e.tensor.scalar_type() || buf.device() != e.tensor.device() || !buf.is_contiguous())
      buf = at::empty({rows + rows / 4, width}, e.tensor.options());  // 25% headroom for uneven steps
    recv = buf.narrow(0, 0, rows);
  } else {
    recv = at::empty({rows, width}, e.tensor.options());
  }
  auto scope = watchdog_->watch(e.info);
  do_all_to_all_v(e.tensor, send_counts, e.recv_counts, recv, e.info);
  return {std::move(recv), std::move(e.recv_counts)};
}

void Communicator::all_reduce(at::Tensor& t, ReduceOp op, const std::string& tag) {
  Entered e = enter(static_cast<int>(CollectiveOp::kAllReduce), &t, nullptr, -1, nullptr,
                    static_cast<int64_t>(op), tag);
  auto scope = watchdog_->watch(e.info);
  do_all_reduce(t, op, e.info);
}

at::Tensor Communicator::all_gather(const at::Tensor& t, const std::string& tag) {
  const at::Tensor input = t.defined() ? t.contiguous() : t;
  Entered e = enter(static_cast<int>(CollectiveOp::kAllGather), &input, nullptr, -1, nullptr, 0, tag);
  auto scope = watchdog_->watch(e.info);
  return do_all_gather(e.tensor, e.info);
}

void Communicator::broadcast(at::Tensor& t, int root, const std::string& tag) {
  Entered e = enter(static_cast<int>(CollectiveOp::kBroadcast), &t, nullptr, -1, nullptr, root, tag);
  auto scope = watchdog_->watch(e.info);
  do_broadcast(t, root, e.info);
}

void Communicator::barrier(const std::string& tag) {
  Entered e = enter(static_cast<int>(CollectiveOp::kBarrier), nullptr, nullptr, -1, nullptr, 0, tag);
  auto scope = watchdog_->watch(e.info);
  do_barrier(e.info);
}

std::vector<int64_t> Communicator::all_gather_i64(const std::vector<int64_t>& v, const std::string& tag) {
  std::vector<int64_t> out(v.size() * world_);
  auto scope = watchdog_->watch(OpInfo{"all_gather_i64", tag, ++seq_, world_, {}});
  do_all_gather_i64(v.data(), static_cast<int64_t>(v.size()), out.data());
  return out;
}

void Communicator::check_agreement(uint64_t value, const std::string& what) {
  const auto all = all_gather_i64({static_cast<int64_t>(value)}, what);
  for (int r = 1; r < world_; ++r)
    if (all[r] != all[0])
      throw CommError(fmt::format("ranks disagree on {}: rank 0 has {:#018x}, rank {} has {:#018x} [raised on "
                                  "every rank]",
                                  what, static_cast<uint64_t>(all[0]), r, static_cast<uint64_t>(all[r])),
                      TRUSTEP_ORIGIN, /*collective=*/true);
}

namespace {

std::map<std::string, std::string> parse_settings(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const size_t eq = line.find('=');
    if (!line.empty()) out[line.substr(0, eq)] = eq == std::string::npos ? "" : line.substr(eq + 1);
    start = end + 1;
  }
  return out;
}

// "'fp32' on ranks 0, 2, 'bf16' on rank 1": each distinct value once, in order of first rank.
std::string who_holds_what(const std::vector<std::optional<std::string>>& values) {
  std::vector<std::pair<std::optional<std::string>, std::vector<int>>> groups;
  for (int r = 0; r < static_cast<int>(values.size()); ++r) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == values[r]; });
    if (it == groups.end()) groups.push_back({values[r], {r}});
    else it->second.push_back(r);
  }
  std::string out;
  for (const auto& [value, ranks] : groups) {
    if (!out.empty()) out += ", ";
    out += value ? fmt::format("'{}'", *value) : std::string("not set");
    out += fmt::format(" on rank{} {}", ranks.size() > 1 ? "s" : "", fmt::join(ranks, ","));
  }
  return out;
}

}  // namespace

void Communicator::check_same_settings(const std::string& settings, const std::string& what) {
  const uint64_t mine = fnv1a(settings.data(), settings.size());
  const auto hashes = all_gather_i64({static_cast<int64_t>(mine)}, what + ".digest");
  if (std::all_of(hashes.begin(), hashes.end(), [&](int64_t h) { return h == hashes[0]; })) return;
  // They differ (every rank knows it): find out where, from everyone's text.
  std::vector<std::map<std::string, std::string>> all;
  for (const auto& text : all_gather_text(settings, what + ".text")) all.push_back(parse_settings(text));
  std::set<std::string> keys;
  for (const auto& m : all)
    for (const auto& [key, value] : m) keys.insert(key);
  std::vector<std::string> differences;
  for (const auto& key : keys) {
    std::vector<std::optional<std::string>> values;
    for (const auto& m : all) {
      auto it = m.find(key);
      values.push_back(it == m.end() ? std::nullopt : std::optional<std::string>(it->second));
    }
    if (std::any_of(values.begin(), values.end(), [&](const auto& v) { return v != values[0]; }))
      differences.push_back(fmt::format("'{}' is {}", key, who_holds_what(values)));
  }
  constexpr size_t kShown = 4;
  std::string listed = fmt::format("{}", fmt::join(differences.begin(),
                                                     differences.begin() + std::min(kShown, differences.size()), "; "));
  if (differences.size() > kShown) listed += fmt::format("; and {} more", differences.size() - kShown);
  if (differences.empty()) listed = "the same keys and values in a different order";
  throw CommError(fmt::format("ranks disagree on {}: {} [raised on every rank]", what, listed), TRUSTEP_ORIGIN,
                  /*collective=*/true);
}

std::vector<std::string> Communicator::all_gather_text(const std::string& text, const std::string& tag) {
  const auto lengths = all_gather_i64({static_cast<int64_t>(text.size())}, tag + ".lengths");
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::vector<std::string> texts(lengths.size());
  if (longest == 0) return texts;  // the same decision on every rank: the lengths are shared
  const size_t words = static_cast<size_t>((longest + 7) / 8);
  std::vector<int64_t> packed(words, 0);
  std::memcpy(packed.data(), text.data(), text.size());
  const auto all = all_gather_i64(packed, tag);
  for (size_t r = 0; r < lengths.size(); ++r)
    texts[r].assign(reinterpret_cast<const char*>(all.data() + r * words), static_cast<size_t>(lengths[r]));
  return texts;
}

void Communicator::fail_together(const std::function<void()>& work, const std::string& what) {
  std::string mine;
  try {
    work();
  } catch (const std::exception& e) {
    mine = e.what();
    if (mine.empty()) mine = "unknown error";
  }
  const std::vector<std::string> texts = all_gather_text(mine, what);
  if (std::all_of(texts.begin(), texts.end(), [](const std::string& t) { return t.empty(); })) return;
  std::string first;
  std::vector<std::string> failed;
  bool same = true;
  for (size_t r = 0; r < texts.size(); ++r) {
    if (texts[r].empty()) {
      same = false;
      continue;
    }
    if (first.empty()) first = texts[r];
    same = same && texts[r] == first;
    failed.push_back(fmt::format("rank {}: {}", r, texts[r]));
  }
  if (same) throw Error(fmt::format("{}: {} [on every rank]", what, first), TRUSTEP_ORIGIN, /*collective=*/true);
  std::string joined;
  for (const auto& f : failed) joined += (joined.empty() ? "" : "; ") + f;
  throw Error(fmt::format("{}: failed on {} of {} ranks: {} [raised on every rank]", what, failed.size(),
                          texts.size(), joined),
              TRUSTEP_ORIGIN, /*collective=*/true);
}

}  // namespace trustep::comm
