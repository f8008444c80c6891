#include "bench/comm_bench.h"
#include "bench/report.h"

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/rand.h>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <numeric>

namespace trustep::bench {
namespace {

using Clock = std::chrono::steady_clock;

std::string human_bytes(int64_t b) {
  if (b >= (int64_t{1} << 20) && b % (int64_t{1} << 20) == 0) return fmt::format("{} MiB", b >> 20);
  if (b >= 1024 && b % 1024 == 0) return fmt::format("{} KiB", b >> 10);
  return fmt::format("{} B", b);
}

// The reference: the same exchange as plain MPI_Alltoallv on preallocated buffers.
struct RawExchange {
  std::vector<int> sc, sd, rc, rd;
  at::Tensor send, recv;
  RawExchange(const at::Tensor& send_rows, const std::vector<int64_t>& send_counts,
              const std::vector<int64_t>& recv_counts, int64_t row_bytes)
      : send(send_rows.cpu().contiguous()) {
    const int64_t recv_rows = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
    recv = at::empty({recv_rows, send.size(1)}, send.options());
    TRUSTEP_CHECK(std::max(send.size(0), recv_rows) * row_bytes <= INT_MAX,
                  "bench comm: a message over 2 GiB exceeds MPI_Alltoallv's int counts");
    int64_t soff = 0, roff = 0;
    for (size_t p = 0; p < send_counts.size(); ++p) {
      sc.push_back(static_cast<int>(send_counts[p] * row_bytes));
      sd.push_back(static_cast<int>(soff * row_bytes));
      rc.push_back(static_cast<int>(recv_counts[p] * row_bytes));
      rd.push_back(static_cast<int>(roff * row_bytes));
      soff += send_counts[p];
      roff += recv_counts[p];
    }
  }
  void run() {
    if (comm::mpi_active()) {
      comm::check_mpi(MPI_Alltoallv(send.data_ptr(), sc.data(), sd.data(), MPI_BYTE, recv.data_ptr(), rc.data(),
                                    rd.data(), MPI_BYTE, MPI_COMM_WORLD),
                      "MPI_Alltoallv (reference)");
    } else {
      recv.copy_(send);  // world of one: the exchange is a copy
    }
  }
};

}  // namespace

void add_comm_bench_options(po::options_description& desc, CommBenchArgs& a) {
  desc.add_options()
      ("sizes", po::value(&a.sizes)->default_value(a.sizes), "mean bytes each rank sends to each peer (list: 4k,1M,...)")
      ("skew", po::value(&a.skews)->default_value(a.skews), "count patterns (list): uniform, hot")
      ("dtype", po::value(&a.dtype)->default_value(a.dtype), "row dtype: fp32, bf16, fp16")
      ("hidden", po::value(&a.hidden)->default_value(a.hidden), "row width in elements")
      ("hot-fraction", po::value(&a.hot_fraction)->default_value(a.hot_fraction),
       "hot skew: share of every rank's rows sent to rank 0, in [0, 1]")
      ("iters", po::value(&a.iters)->default_value(a.iters), "timed iterations per point")
      ("warmup", po::value(&a.warmup)->default_value(a.warmup), "untimed iterations per point")
      ("json", po::value(&a.json), "write machine-readable records to FILE (rank 0)");
}

CommBenchOptions validate(const CommBenchArgs& a) {
  CommBenchOptions o;
  o.bytes_per_peer = parse_size_list(a.sizes, "--sizes");
  o.skews = parse_word_list(a.skews, "--skew");
  for (const auto& s : o.skews)
    TRUSTEP_CHECK_AS(OptionError, s == "uniform" || s == "hot",
                     "invalid value '{}' for option '--skew': '{}' is not uniform or hot", a.skews, s);
  o.dtype = parse_dtype(a.dtype, "--dtype");
  TRUSTEP_CHECK_AS(OptionError,
                   o.dtype == c10::ScalarType::Float || o.dtype == c10::ScalarType::BFloat16 ||
                       o.dtype == c10::ScalarType::Half,
                   "invalid value '{}' for option '--dtype': bench comm takes fp32, bf16 or fp16", a.dtype);
  TRUSTEP_CHECK_AS(OptionError, a.hidden > 0, "invalid value '{}' for option '--hidden': must be > 0", a.hidden);
  TRUSTEP_CHECK_AS(OptionError, a.hot_fraction >= 0 && a.hot_fraction <= 1,
                   "invalid value '{}' for option '--hot-fraction': must be in [0, 1]", a.hot_fraction);
  TRUSTEP_CHECK_AS(OptionError, a.iters > 0, "invalid value '{}' for option '--iters': must be > 0", a.iters);
  TRUSTEP_CHECK_AS(OptionError, a.warmup >= 0, "invalid value '{}' for option '--warmup': must be >= 0", a.warmup);
  o.hidden = a.hidden;
  o.hot_fraction = a.hot_fraction;
  o.iters = a.iters;
  o.warmup = a.warmup;
  check_json_path(a.json);
  o.json = a.json;
  return o;
}

std::vector<int64_t> skewed_counts(const std::string& skew, int64_t rows_per_rank, int world, int rank,
                                   double hot_fraction) {
  std::vector<int64_t> counts(world, 0);
  int64_t spread = rows_per_rank;
  if (skew == "hot") {
    counts[0] = static_cast<int64_t>(hot_fraction * static_cast<double>(rows_per_rank) + 0.5);
    spread -= counts[0];
  }
  for (int p = 0; p < world; ++p) counts[p] += spread / world;
  // The remainder goes to the next peers after this rank, so no rank is always favoured.
  for (int64_t i = 0; i < spread % world; ++i) counts[(rank + 1 + i) % world] += 1;
  return counts;
}

int run_comm_bench(comm::Communicator& comm, const CommBenchOptions& o) {
  const int world = comm.size();
  const bool on_gpu = std::string(comm.name()) == "nccl";
  const auto device = on_gpu ? c10::Device(c10::DeviceType::CUDA) : c10::Device(c10::DeviceType::CPU);
  const int64_t row_bytes = o.hidden * static_cast<int64_t>(c10::elementSize(o.dtype));
  const Contract contract{boundary::kDispatchSend, o.dtype, device.type(), 2, true};
  const char* reference = comm::mpi_active() ? (on_gpu ? "MPI_Alltoallv (host copies)" : "MPI_Alltoallv") : "memcpy";

  nlohmann::json records = nlohmann::json::array();
  if (comm.rank() == 0) {
    fmt::print("trustep bench comm: backend {}, {} ranks, dtype {}, rows of {} elements ({} B), {} iters, "
               "reference {}\n",
               comm.name(), world, dtype_name(o.dtype), o.hidden, row_bytes, o.iters, reference);
    fmt::print("{:<8} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}\n", "skew", "bytes/peer", "rows/rank",
               "trustep_us", "raw_us", "trustep_GB/s", "raw_GB/s", "ratio");
  }
  for (const auto& skew : o.skews) {
    for (const int64_t bytes : o.bytes_per_peer) {
      const int64_t rows = std::max<int64_t>(1, bytes * world / row_bytes);
      const auto counts = skewed_counts(skew, rows, world, comm.rank(), o.hot_fraction);
      const at::Tensor send = at::rand({rows, o.hidden}, at::TensorOptions().dtype(o.dtype).device(device));
      // One checked exchange up front gives the receive counts for the raw reference.
      const auto first = comm.all_to_all_v(send, counts, contract);
      RawExchange raw(send, counts, first.recv_counts, row_bytes);

      at::Tensor recv_buffer;  // reused, as a dispatcher keeps its buffers
      std::vector<double> ours_us, raw_us;
      for (int i = 0; i < o.warmup + o.iters; ++i) {
        double t_ours = 0, t_raw = 0;
        for (int side = 0; side < 2; ++side) {  // alternate who goes first
          const bool ours_now = (side == 0) == (i % 2 == 0);
          sync_world();
          const auto t0 = Clock::now();
          if (ours_now) {
            comm.all_to_all_v(send, counts, contract, -1, &recv_buffer);
            comm.synchronize();  // NCCL: wait for the stream, not just the enqueue
          } else {
            raw.run();
          }
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          (ours_now ? t_ours : t_raw) = us;
        }
        std::vector<double> slowest{t_ours, t_raw};  // an exchange is as fast as its slowest rank
        max_over_ranks(slowest);
        const double mo = slowest[0], mr = slowest[1];
        if (i >= o.warmup) {
          ours_us.push_back(mo);
          raw_us.push_back(mr);
        }
      }
      const double ours = median(ours_us), ref = median(raw_us);
      const double sent = static_cast<double>(rows * row_bytes);  // bytes each rank sends
      const double ratio = ours > 0 ? ref / ours : 0;
      if (comm.rank() == 0) {
        fmt::print("{:<8} {:>10} {:>10} {:>12.1f} {:>12.1f} {:>12.2f} {:>12.2f} {:>8.3f}\n", skew,
                   human_bytes(bytes), rows, ours, ref, sent / ours / 1e3, sent / ref / 1e3, ratio);
        records.push_back({{"skew", skew},
                           {"bytes_per_peer", bytes},
                           {"rows_per_rank", rows},
                           {"row_bytes", row_bytes},
                           {"trustep_us", ours},
                           {"raw_us", ref},
                           {"trustep_GBps", sent / ours / 1e3},
                           {"raw_GBps", sent / ref / 1e3},
                           {"vs_raw_ratio", ratio}});
      }
    }
  }
  if (comm.rank() == 0 && !o.json.empty()) {
    nlohmann::json doc{{"benchmark", "comm"},
                       {"version", TRUSTEP_VERSION},
                       {"backend", comm.name()},
                       {"world", world},
                       {"dtype", dtype_name(o.dtype)},
                       {"hidden", o.hidden},
                       {"hot_fraction", o.hot_fraction},
                       {"iters", o.iters},
                       {"reference", reference},
                       {"ratio_definition", "raw_us / trustep_us (median over iterations of the slowest rank)"},
                       {"records", records}};
    write_json_report(o.json, doc, "comm");
  }
  return 0;
}

}  // namespace trustep::bench
