#include "comm/wire_header.h"

#include "core/contract.h"
#include "core/dtype.h"
#include "core/error.h"

#include <c10/core/DeviceType.h>

#include <cstring>

namespace trustep::comm {
namespace {

constexpr int64_t kMagic = 0x7472757374657031;  // "trustep1"
constexpr int kNameWords = kBoundaryChars / 8;

// Row layout: fixed fields, then the boundary name, then counts_len and `world` counts.
enum Field : int {
  kFMagic, kFVersion, kFOp, kFSeq, kFLayer, kFDeclared, kFActual, kFExpDevice, kFActDevice,
  kFExpNdim, kFActNdim, kFContiguous, kFPolicy, kFRows, kFRowWidth, kFArg, kFName,
  kFCountsLen = kFName + kNameWords, kFCounts
};

std::string device_name(int64_t code) {
  if (code < 0) return "any device";
  return c10::DeviceTypeName(static_cast<c10::DeviceType>(code), /*lower_case=*/true);
}

std::string where(const HeaderFacts& h, int rank) {
  std::string s = fmt::format("{} #{}", op_name(h.op), h.seq);
  if (!h.boundary.empty()) s += fmt::format(" at boundary '{}'", h.boundary);
  return s + fmt::format(" on rank {}", rank);
}

std::string arg_name(const HeaderFacts& h) {
  if (h.op != CollectiveOp::kAllReduce) return std::to_string(h.arg);
  static const char* kOps[] = {"sum", "max", "min"};
  return h.arg >= 0 && h.arg < 3 ? kOps[h.arg] : std::to_string(h.arg);
}

[[noreturn]] void fail_comm(const std::string& message) {
  throw CommError(message + " [raised on every rank]", TRUSTEP_ORIGIN, /*collective=*/true);
}

[[noreturn]] void fail_contract(const HeaderFacts& h, int rank, const std::string& expected,
                                const std::string& actual, const std::string& note = "") {
  std::string message = violation_message(h.boundary, rank, static_cast<int>(h.layer), expected, actual);
  if (!note.empty()) message += " (" + note + ")";
  throw ContractViolation(message + " [raised on every rank]", TRUSTEP_ORIGIN, /*collective=*/true, h.boundary,
                          expected, actual, rank);
}

}  // namespace

const char* op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllToAllV: return "all_to_all_v";
    case CollectiveOp::kAllReduce: return "all_reduce";
    case CollectiveOp::kAllGather: return "all_gather";
    case CollectiveOp::kBroadcast: return "broadcast";
    case CollectiveOp::kBarrier: return "barrier";
  }
  return "unknown collective";
}

int64_t header_length(int world) { return kFCounts + world; }

std::vector<int64_t> pack_header(const HeaderFacts& f, int world) {
  std::vector<int64_t> row(header_length(world), 0);
  row[kFMagic] = kMagic;
  row[kFVersion] = kContractVersion;
  row[kFOp] = static_cast<int64_t>(f.op);
  row[kFSeq] = f.seq;
  row[kFLayer] = f.layer;
  row[kFDeclared] = f.declared_dtype;
  row[kFActual] = f.actual_dtype;
  row[kFExpDevice] = f.expected_device;
  row[kFActDevice] = f.actual_device;
  row[kFExpNdim] = f.expected_ndim;
  row[kFActNdim] = f.actual_ndim;
  row[kFContiguous] = f.contiguous;
  row[kFPolicy] = f.policy;
  row[kFRows] = f.rows;
  row[kFRowWidth] = f.row_width;
  row[kFArg] = f.arg;
  std::memcpy(&row[kFName], f.boundary.data(), std::min<size_t>(f.boundary.size(), kBoundaryChars));
  row[kFCountsLen] = static_cast<int64_t>(f.counts.size());
  for (size_t i = 0; i < f.counts.size() && i < static_cast<size_t>(world); ++i) row[kFCounts + i] = f.counts[i];
  return row;
}

HeaderFacts unpack_header(const int64_t* row, int world) {
  HeaderFacts f;
  f.op = static_cast<CollectiveOp>(row[kFOp]);
  f.seq = row[kFSeq];
  f.layer = row[kFLayer];
  f.declared_dtype = row[kFDeclared];
  f.actual_dtype = row[kFActual];
  f.expected_device = row[kFExpDevice];
  f.actual_device = row[kFActDevice];
  f.expected_ndim = row[kFExpNdim];
  f.actual_ndim = row[kFActNdim];
  f.contiguous = row[kFContiguous];
  f.policy = row[kFPolicy];
  f.rows = row[kFRows];
  f.row_width = row[kFRowWidth];
  f.arg = row[kFArg];
  char name[kBoundaryChars + 1] = {};
  std::memcpy(name, &row[kFName], kBoundaryChars);
  f.boundary = name;
  const int64_t n = std::min<int64_t>(std::max<int64_t>(row[kFCountsLen], 0), world);
  f.counts.assign(row + kFCounts, row + kFCounts + n);
  if (row[kFCountsLen] != n) f.counts.resize(std::max<int64_t>(row[kFCountsLen], 0), 0);  // keep the length
  return f;
}

std::vector<int64_t> recv_counts_from(const std::vector<int64_t>& gathered, int world, int rank) {
  std::vector<int64_t> counts(world);
  for (int p = 0; p < world; ++p) counts[p] = gathered[p * header_length(world) + kFCounts + rank];
  return counts;
}

void verify_headers(const std::vector<int64_t>& gathered, int world) {
  const int64_t len = header_length(world);
  TRUSTEP_CHECK(static_cast<int64_t>(gathered.size()) == len * world,
                "verify_headers: gathered {} values, expected {}", gathered.size(), len * world);

  // 1. Same build and same collective on every rank.
  for (int r = 0; r < world; ++r) {
    const int64_t* row = &gathered[r * len];
    if (row[kFMagic] != kMagic)
      fail_comm(fmt::format("rank {} sent a corrupt collective header (magic {:#x}); mixed builds or memory "
                            "corruption",
                            r, row[kFMagic]));
    if (row[kFVersion] != gathered[kFVersion])
      fail_comm(fmt::format("ranks run different trustep contract versions: rank 0 has {}, rank {} has {}",
                            gathered[kFVersion], r, row[kFVersion]));
  }
  std::vector<HeaderFacts> h;
  for (int r = 0; r < world; ++r) h.push_back(unpack_header(&gathered[r * len], world));
  for (int r = 1; r < world; ++r)
    if (h[r].op != h[0].op || h[r].seq != h[0].seq || h[r].boundary != h[0].boundary)
      fail_comm(fmt::format("ranks are not in the same collective: {}, but {}", where(h[0], 0), where(h[r], r)));

  const HeaderFacts& ref = h[0];
  const bool is_a2a = ref.op == CollectiveOp::kAllToAllV;
  const bool carries_data = ref.op != CollectiveOp::kBarrier;

  // 2. Same declared contract and policy.
  for (int r = 1; r < world; ++r) {
    if (h[r].policy != ref.policy)
      fail_comm(fmt::format("ranks disagree on the contract policy at {}: rank 0 uses {}, rank {} uses {}",
                            where(ref, 0), policy_name(static_cast<ContractPolicy>(ref.policy)), r,
                            policy_name(static_cast<ContractPolicy>(h[r].policy))));
    if (carries_data && h[r].declared_dtype != ref.declared_dtype)
      fail_contract(h[r], r, wire_dtype_name(ref.declared_dtype), wire_dtype_name(h[r].declared_dtype),
                    fmt::format("ranks disagree on the declared dtype: rank 0 declares {}, rank {} declares {}",
                                wire_dtype_name(ref.declared_dtype), r, wire_dtype_name(h[r].declared_dtype)));
  }

  // 3. Every rank's tensor honours the contract.
  if (carries_data) {
    for (int r = 0; r < world; ++r) {
      const HeaderFacts& f = h[r];
      if (f.expected_device >= 0 && f.actual_device != f.expected_device)
        fail_contract(f, r, device_name(f.expected_device), device_name(f.actual_device));
      if (f.expected_ndim >= 0 && f.actual_ndim != f.expected_ndim)
        fail_contract(f, r, fmt::format("ndim {}", f.expected_ndim), fmt::format("ndim {}", f.actual_ndim));
      if (f.actual_dtype != f.declared_dtype)
        fail_contract(f, r, wire_dtype_name(f.declared_dtype), wire_dtype_name(f.actual_dtype),
                      fmt::format("policy {}", policy_name(static_cast<ContractPolicy>(f.policy))));
      if (f.actual_dtype == static_cast<int64_t>(WireDtype::kInvalid))
        fail_contract(f, r, "a dtype trustep can send", "an unsupported dtype");
      if (!f.contiguous) fail_contract(f, r, "contiguous", "non-contiguous");
    }
  }

  // 4. Shapes and arguments fit together.
  for (int r = 1; r < world && carries_data; ++r) {
    if (h[r].actual_device != ref.actual_device)
      fail_comm(fmt::format("{}: rank 0 passes a {} tensor, rank {} a {} tensor; every rank must use the same "
                            "device type",
                            where(ref, 0), device_name(ref.actual_device), r, device_name(h[r].actual_device)));
    if (is_a2a && h[r].row_width != ref.row_width)
      fail_contract(h[r], r, fmt::format("rows of {} elements (as rank 0)", ref.row_width),
                    fmt::format("rows of {} elements", h[r].row_width));
    if (!is_a2a && h[r].rows != ref.rows)
      fail_comm(fmt::format("{}: rank 0 passes {} elements, rank {} passes {}", where(ref, 0), ref.rows, r,
                            h[r].rows));
    if (!is_a2a && h[r].arg != ref.arg)
      fail_comm(fmt::format("{}: rank 0 passes {} {}, rank {} passes {}", where(ref, 0),
                            ref.op == CollectiveOp::kBroadcast ? "root" : "reduce op", arg_name(ref), r,
                            arg_name(h[r])));
  }
  if (ref.op == CollectiveOp::kBroadcast && (ref.arg < 0 || ref.arg >= world))
    fail_comm(fmt::format("{}: root {} is not a rank of this world of {}", where(ref, 0), ref.arg, world));

  if (is_a2a) {
    for (int r = 0; r < world; ++r) {
      const HeaderFacts& f = h[r];
      if (static_cast<int>(f.counts.size()) != world)
        fail_comm(fmt::format("{}: {} send counts given for a world of {}", where(f, r), f.counts.size(), world));
      int64_t sum = 0;
      for (int p = 0; p < world; ++p) {
        if (f.counts[p] < 0)
          fail_comm(fmt::format("{}: negative send count {} for peer {}", where(f, r), f.counts[p], p));
        sum += f.counts[p];
      }
      if (sum != f.rows)
        fail_comm(fmt::format("{}: send counts add up to {} rows but the tensor has {}", where(f, r), sum, f.rows));
    }
  }
}

}  // namespace trustep::comm
