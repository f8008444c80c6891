#include "bench/train_bench.h"
#include "bench/report.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "core/trace.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <numeric>

namespace trustep::bench {
namespace {

using Clock = std::chrono::steady_clock;

// One recorded exchange, ready to replay with its own buffers.
struct Replay {
  comm::ExchangeRecord record;
  at::Tensor send;  // [sum(send_counts), width]
  at::Tensor recv;  // reused receive buffer
};

// The spans of one training step, per kTrainPhases name (µs).
std::vector<double> step_phases(const std::vector<trace::Span>& spans, int64_t step) {
  std::vector<trace::Span> mine;
  for (const auto& s : spans)
    if (s.step == step) mine.push_back(s);
  const auto totals = trace::totals(mine);
  std::vector<double> out;
  for (const auto& name : kTrainPhases) {
    auto it = totals.find(name);
    out.push_back(it == totals.end() ? 0.0 : it->second.us);
  }
  return out;
}

}  // namespace

void add_train_bench_options(po::options_description& desc, TrainBenchArgs& a) {
  po::options_description bench("bench train");
  bench.add_options()
      ("iters", po::value(&a.iters)->default_value(a.iters), "timed training steps")
      ("warmup-iters", po::value(&a.warmup_iters)->default_value(a.warmup_iters), "untimed steps before them")
      ("json", po::value(&a.json), "write machine-readable records to FILE (rank 0)");
  desc.add(bench);
}

void validate(const TrainBenchArgs& a) {
  TRUSTEP_CHECK_AS(OptionError, a.iters > 0, "invalid value '{}' for option '--iters': must be > 0", a.iters);
  TRUSTEP_CHECK_AS(OptionError, a.warmup_iters >= 0,
                   "invalid value '{}' for option '--warmup-iters': must be >= 0", a.warmup_iters);
  check_json_path(a.json);
}

TrainBenchRecord measure_train(comm::Communicator& comm, const train::TrainConfig& config, const TrainBenchArgs& a) {
  train::TrainConfig c = config;
  c.resume.clear();
  train::Trainer trainer(comm, c);

  // Untimed steps, then timed ones with spans and exchange recording on.
  reset_peak_rss();
  for (int i = 0; i < a.warmup_iters; ++i) trainer.step(i);
  std::vector<double> step_us;
  std::vector<comm::ExchangeRecord> exchanges;
  train::start_trace(comm);
  for (int i = 0; i < a.iters; ++i) {
    const int64_t step = a.warmup_iters + i;
    comm.record_exchanges(i == a.iters - 1);  // one step's pattern is enough to replay
    sync_world();
    const auto t0 = Clock::now();
    trainer.step(step);
    comm.synchronize();
    step_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  comm.record_exchanges(false);
  exchanges = comm.take_exchanges();
  trace::enable(false);
  const std::vector<trace::Span> spans = trace::spans();

  TrainBenchRecord r;
  r.world = comm.size();
  r.tokens_per_step = trainer.tokens_per_step();
  // Per step: [time, phases...], max over ranks, then the median of each column.
  std::vector<std::vector<double>> columns(1 + kTrainPhases.size());
  for (int i = 0; i < a.iters; ++i) {
    std::vector<double> row{step_us[static_cast<size_t>(i)]};
    const auto phases = step_phases(spans, a.warmup_iters + i);
    row.insert(row.end(), phases.begin(), phases.end());
    max_over_ranks(row);
    for (size_t k = 0; k < row.size(); ++k) columns[k].push_back(row[k]);
  }
  r.step_us = median(columns[0]);
  for (size_t k = 0; k < kTrainPhases.size(); ++k) r.phase_us[kTrainPhases[k]] = median(columns[k + 1]);
  r.tokens_per_s = r.step_us > 0 ? static_cast<double>(r.tokens_per_step) / (r.step_us * 1e-6) : 0;

  // The same exchanges, bare: every rank recorded the same sequence of collectives (lockstep).
  std::vector<Replay> replays;
  double sent_bytes = 0;
  for (const auto& e : exchanges) {
    const int64_t rows = std::accumulate(e.send_counts.begin(), e.send_counts.end(), int64_t{0});
    replays.push_back({e, at::zeros({rows, e.width}, at::TensorOptions().dtype(e.dtype).device(e.device)), {}});
    sent_bytes += static_cast<double>(rows * e.width) * static_cast<double>(c10::elementSize(e.dtype));
  }
  std::vector<double> bare;
  for (int i = 0; i < a.warmup_iters + a.iters; ++i) {
    sync_world();
    const auto t0 = Clock::now();
    for (auto& p : replays) {
      const Contract contract{p.record.boundary, p.record.dtype, p.send.device().type(), 2, true};
      comm.all_to_all_v(p.send, p.record.send_counts, contract, -1, &p.recv);
    }
    comm.synchronize();
    std::vector<double> t{std::chrono::duration<double, std::micro>(Clock::now() - t0).count()};
    max_over_ranks(t);
    if (i >= a.warmup_iters) bare.push_back(t[0]);
  }
  r.bare_exchange_us = median(bare);
  r.exchanges_per_step = static_cast<int64_t>(replays.size());
  std::vector<double> tail{sent_bytes, peak_rss_mib()};
  max_over_ranks(tail);
  r.exchange_bytes_per_step = tail[0];
  r.peak_rss_mib = tail[1];
  r.exchange_share = r.step_us > 0 ? r.bare_exchange_us / r.step_us : 0;
  const double traced = r.phase_us["moe.exchange"] + r.phase_us["moe.exchange.bwd"];
  r.exchange_overhead = r.bare_exchange_us > 0 ? traced / r.bare_exchange_us : 0;

  if (!config.trace.empty()) train::write_trace(comm, config.trace, "trustep bench train");
  return r;
}

int run_train_bench(comm::Communicator& comm, const train::TrainConfig& config, const TrainBenchArgs& a) {
  const auto& m = config.model;
  if (comm.rank() == 0)
    fmt::print("trustep bench train: backend {}, {} ranks, {} layers, H {}, F {}, E {} (top-{}), mode {}, dtype {}, "
               "{} sequences x {} tokens per rank, {} timed steps after {}\n",
               comm.name(), comm.size(), m.layers, m.hidden, m.ffn, m.experts, m.top_k,
               routing::mode_name(m.selector.mode), dtype_name(m.dtype), config.batch, m.max_seq, a.iters,
               a.warmup_iters);
  const TrainBenchRecord r = measure_train(comm, config, a);
  if (comm.rank() != 0) return 0;

  fmt::print("step {:.1f} ms, {:.0f} tokens/s ({} ranks), peak RSS {:.0f} MiB per rank\n", r.step_us * 1e-3,
             r.tokens_per_s, r.world, r.peak_rss_mib);
  fmt::print("{:<20} {:>10} {:>7}\n", "phase", "ms", "share");
  for (const auto& name : kTrainPhases) {
    const double us = r.phase_us.at(name);
    const bool nested = name.rfind("moe.", 0) == 0;  // inside train.forward / train.backward
    fmt::print("{:<20} {:>10.2f} {:>6.1f}%\n", (nested ? "  " : "") + name, us * 1e-3,
               r.step_us > 0 ? 100.0 * us / r.step_us : 0.0);
  }
  fmt::print("bare exchanges: {} per step, {:.1f} KiB sent per rank, {:.2f} ms = {:.1f}% of the step; "
             "traced exchange time / bare = {:.2f}\n",
             r.exchanges_per_step, r.exchange_bytes_per_step / 1024.0, r.bare_exchange_us * 1e-3,
             100.0 * r.exchange_share, r.exchange_overhead);

  if (!a.json.empty()) {
    nlohmann::json phases = nlohmann::json::object();
    for (const auto& [name, us] : r.phase_us) phases[name] = us;
    nlohmann::json rec{{"world", r.world},
                       {"layers", m.layers},
                       {"hidden", m.hidden},
                       {"ffn", m.ffn},
                       {"experts", m.experts},
                       {"top_k", m.top_k},
                       {"dtype", dtype_name(m.dtype)},
                       {"mode", routing::mode_name(m.selector.mode)},
                       {"batch", config.batch},
                       {"seq_len", m.max_seq},
                       {"tokens_per_step", r.tokens_per_step},
                       {"step_us", r.step_us},
                       {"tokens_per_s", r.tokens_per_s},
                       {"phase_us", phases},
                       {"bare_exchange_us", r.bare_exchange_us},
                       {"exchanges_per_step", r.exchanges_per_step},
                       {"exchange_bytes_per_step", r.exchange_bytes_per_step},
                       {"exchange_share_ratio", r.exchange_share},
                       {"exchange_overhead_ratio", r.exchange_overhead},
                       {"peak_rss_mib", r.peak_rss_mib}};
    nlohmann::json doc{{"benchmark", "train"},
                       {"version", TRUSTEP_VERSION},
                       {"backend", comm.name()},
                       {"world", r.world},
                       {"iters", a.iters},
                       {"warmup_iters", a.warmup_iters},
                       {"ratio_definition",
                        "exchange_share_ratio = bare exchanges / step; exchange_overhead_ratio = traced "
                        "moe.exchange(+.bwd) / bare exchanges; bare exchanges = the step's all-to-alls replayed "
                        "with the same counts through the same communicator; times: median over steps of the "
                        "slowest rank"},
                       {"records", nlohmann::json::array({rec})}};
    write_json_report(a.json, doc, "train");
  }
  return 0;
}

}  // namespace trustep::bench
