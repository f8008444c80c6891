#include "bench/layer_bench.h"
#include "bench/report.h"
#include "bench/select_bench.h"  // read_npy, write_npy

#include "comm/mpi_runtime.h"
#include "core/contract.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "dispatch/dispatcher.h"
#include "model/moe_layer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/sum.h>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <numeric>
#include <filesystem>

namespace trustep::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Local µs of fn() after a barrier; synchronize() waits for device work of a device backend.
double time_us(comm::Communicator& comm, const std::function<void()>& fn) {
  sync_world();
  const auto t0 = Clock::now();
  fn();
  comm.synchronize();
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

void clear_grads(torch::nn::Module& m) {
  for (auto& p : m.parameters()) p.mutable_grad() = at::Tensor();
}

int64_t total(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// The tokens' device: the GPU with the nccl backend (one GPU per rank), else the CPU.
c10::Device layer_device(const comm::Communicator& comm) {
  return std::string(comm.name()) == "nccl" ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
}

// The benchmarked layer, the same for timing and for --dump-output.
model::MoELayerConfig layer_config(const LayerBenchOptions& o, c10::ScalarType dtype, c10::ScalarType comm_dtype,
                                   c10::Device device) {
  model::MoELayerConfig cfg;
  cfg.device = device;
  cfg.hidden = o.hidden;
  cfg.ffn = o.ffn;
  cfg.experts = o.experts;
  cfg.top_k = o.top_k;
  cfg.dtype = dtype;
  cfg.comm_dtype = comm_dtype;
  cfg.selector.mode = o.selector;
  cfg.selector.seed = o.seed;
  cfg.seed = o.seed;
  return cfg;
}

LayerBenchRecord measure_point(comm::Communicator& comm, const LayerBenchOptions& o, int64_t T,
                               c10::ScalarType dtype, c10::ScalarType comm_dtype) {
  const int world = comm.size();
  const c10::Device device = layer_device(comm);
  reset_peak_rss();
  auto layer = std::make_shared<model::MoELayerImpl>(layer_config(o, dtype, comm_dtype, device), comm);
  if (!o.weights.empty()) layer->load_hf(o.weights, o.weights_prefix);
  layer->to(device);

  // Inputs seeded by (seed, rank): every rank routes different tokens. Drawn on the CPU (the
  // same numbers on any device), then moved.
  at::Generator gen = at::detail::createCPUGenerator(o.seed * 1000003ULL + static_cast<uint64_t>(comm.rank()));
  const at::Tensor x = at::randn({T, o.hidden}, gen, at::TensorOptions().dtype(at::kFloat)).to(device, dtype);
  routing::SelectorInputs trust;
  if (o.selector != routing::SelectorMode::kRouter) {
    trust.trust = at::rand({T, o.experts}, gen, at::TensorOptions().dtype(at::kFloat)).to(device);
    trust.trusted = (at::rand({T}, gen, at::TensorOptions().dtype(at::kFloat)) < 0.5).to(device);
  }

  // The layer's own routing, once: the rows and per-expert counts its experts see, and the
  // dispatch's send counts. Same router weights, same selector config and seed as the layer.
  at::Tensor rows;
  std::vector<int64_t> local_counts, send_counts, recv_counts;
  {
    at::NoGradGuard no_grad;
    const model::MoELayerConfig& cfg = layer->config();
    routing::SelectorConfig sc = cfg.selector;
    sc.experts = cfg.experts;
    sc.top_k = cfg.top_k;
    routing::Selector selector(sc, device);
    routing::SelectorInputs in = trust;
    in.probs = layer->router->forward(x).probs;
    const routing::Selection sel = selector.select(in);
    dispatch::Dispatcher dispatcher(comm, dispatch::ExpertLayout::make(o.experts, world, comm.rank()), comm_dtype,
                                    dtype);
    auto d = dispatcher.dispatch(x, sel.experts);
    rows = d.rows.contiguous();
    local_counts = d.plan.local_counts;
    send_counts = d.plan.send_counts;
    recv_counts = d.plan.recv_counts;
  }

  // Raw exchange of the same bytes: dispatch (send counts) and combine (reverse), in the comm
  // dtype, with reused receive buffers (the cheapest the data movement can be).
  const at::Tensor a2a_send = at::rand({total(send_counts), o.hidden}, gen).to(device, comm_dtype);
  const at::Tensor a2a_back = at::rand({total(recv_counts), o.hidden}, gen).to(device, comm_dtype);
  const Contract go{boundary::kDispatchSend, comm_dtype, device.type(), 2, true};
  const Contract back{boundary::kCombineSend, comm_dtype, device.type(), 2, true};
  at::Tensor buf_go, buf_back;
  auto raw_pair = [&] {
    comm.all_to_all_v(a2a_send, send_counts, go, -1, &buf_go);
    comm.all_to_all_v(a2a_back, recv_counts, back, -1, &buf_back);
  };

  // Memory from here on: the weights, inputs and buffers the steps use, not the initialisation.
  const double init_peak_mib = peak_rss_mib();
  reset_peak_rss();

  std::vector<std::function<void()>> steps;
  steps.push_back([&] {  // 0 layer forward (inference)
    at::NoGradGuard no_grad;
    (void)layer->forward(x, trust);
  });
  steps.push_back([&] {  // 1 gemm forward
    at::NoGradGuard no_grad;
    (void)layer->experts->forward(rows, local_counts);
  });
  steps.push_back([&] {  // 2 raw exchanges: forward 2, with backward 4
    raw_pair();
    if (o.backward) raw_pair();
  });
  if (o.backward) {
    steps.push_back([&] {  // 3 layer forward + backward of out.sum(), input grads included
      clear_grads(*layer);
      const at::Tensor xi = x.detach().requires_grad_(true);
      at::sum(layer->forward(xi, trust).hidden).backward();
    });
    steps.push_back([&] {  // 4 gemm forward + backward, input grads included
      clear_grads(*layer->experts);
      const at::Tensor r = rows.detach().requires_grad_(true);
      at::sum(layer->experts->forward(r, local_counts)).backward();
    });
  }

  // The layer step also records its spans (on a device every span waits for it).
  const size_t layer_step = o.backward ? 3 : 0;
  std::function<void()> sync;
  if (device.is_cuda()) sync = [&comm] { comm.synchronize(); };
  std::vector<double> phases;
  std::vector<std::vector<double>> samples(steps.size() + kLayerPhases.size());
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    std::vector<double> t(steps.size());
    for (size_t s = 0; s < steps.size(); ++s) {
      // Rotate the order so no step always runs first (cold caches) or last.
      const size_t k = (s + static_cast<size_t>(i)) % steps.size();
      t[k] = k == layer_step ? time_us(comm, [&] { phases = traced_phases(steps[k], kLayerPhases, sync); })
                             : time_us(comm, steps[k]);
    }
    t.insert(t.end(), phases.begin(), phases.end());
    max_over_ranks(t);
    if (i >= o.warmup)
      for (size_t s = 0; s < t.size(); ++s) samples[s].push_back(t[s]);
  }

  LayerBenchRecord r;
  r.tokens = T;
  r.hidden = o.hidden;
  r.ffn = o.ffn;
  r.experts = o.experts;
  r.top_k = o.top_k;
  r.dtype = dtype_name(dtype);
  r.comm_dtype = dtype_name(comm_dtype);
  r.selector = routing::mode_name(o.selector);
  r.world = world;
  std::vector<double> rows_max{static_cast<double>(rows.size(0))};
  max_over_ranks(rows_max);
  r.expert_rows = static_cast<int64_t>(rows_max[0]);
  r.fwd_us = median(samples[0]);
  r.gemm_fwd_us = median(samples[1]);
  r.raw_a2a_us = median(samples[2]);
  if (o.backward) {
    r.fwd_bwd_us = median(samples[3]);
    r.gemm_fwd_bwd_us = median(samples[4]);
  }
  const double layer_us = o.backward ? r.fwd_bwd_us : r.fwd_us;
  const double gemm_us = o.backward ? r.gemm_fwd_bwd_us : r.gemm_fwd_us;
  r.gemm_bound_ratio = layer_us > 0 ? gemm_us / layer_us : 0;
  r.a2a_share = layer_us > 0 ? r.raw_a2a_us / layer_us : 0;
  r.tokens_per_s = layer_us > 0 ? static_cast<double>(T) / (layer_us * 1e-6) : 0;
  for (size_t p = 0; p < kLayerPhases.size(); ++p) r.phase_us.push_back(median(samples[steps.size() + p]));
  double weight_bytes = 0;
  for (const auto& w : layer->experts->parameters())
    weight_bytes += static_cast<double>(w.numel()) * static_cast<double>(w.element_size());
  std::vector<double> memory{weight_bytes / (1024.0 * 1024.0), peak_rss_mib(), init_peak_mib};
  max_over_ranks(memory);
  r.expert_weight_mib = memory[0];
  r.peak_rss_mib = memory[1];
  r.init_peak_rss_mib = memory[2];
  return r;
}

nlohmann::json to_json(const LayerBenchRecord& r, bool backward) {
  nlohmann::json j{{"tokens", r.tokens},
                   {"hidden", r.hidden},
                   {"ffn", r.ffn},
                   {"experts", r.experts},
                   {"top_k", r.top_k},
                   {"dtype", r.dtype},
                   {"comm_dtype", r.comm_dtype},
                   {"selector", r.selector},
                   {"world", r.world},
                   {"expert_rows", r.expert_rows},
                   {"fwd_us", r.fwd_us},
                   {"gemm_fwd_us", r.gemm_fwd_us},
                   {"raw_a2a_us", r.raw_a2a_us},
                   {"gemm_bound_ratio", r.gemm_bound_ratio},
                   {"a2a_share", r.a2a_share},
                   {"a2a_share_ratio", r.a2a_share},
                   {"tokens_per_s", r.tokens_per_s},
                   {"expert_weight_mib", r.expert_weight_mib},
                   {"peak_rss_mib", r.peak_rss_mib},
                   {"init_peak_rss_mib", r.init_peak_rss_mib}};
  nlohmann::json phases = nlohmann::json::object();
  for (size_t p = 0; p < kLayerPhases.size(); ++p) phases[kLayerPhases[p]] = r.phase_us[p];
  j["phase_us"] = phases;
  if (backward) {
    j["fwd_bwd_us"] = r.fwd_bwd_us;
    j["gemm_fwd_bwd_us"] = r.gemm_fwd_bwd_us;
  } else {
    j["fwd_bwd_us"] = nullptr;
    j["gemm_fwd_bwd_us"] = nullptr;
  }
  if (r.bf16_over_fp32_ratio > 0) j["bf16_over_fp32_ratio"] = r.bf16_over_fp32_ratio;
  return j;
}

}  // namespace

void add_layer_bench_options(po::options_description& desc, LayerBenchArgs& a) {
  desc.add_options()
      ("tokens", po::value(&a.tokens)->default_value(a.tokens), "tokens per rank (list: 16,256,4096)")
      ("hidden", po::value(&a.hidden)->default_value(a.hidden), "hidden size H")
      ("ffn", po::value(&a.ffn)->default_value(a.ffn), "expert intermediate size F")
      ("experts", po::value(&a.experts)->default_value(a.experts), "global experts E (a multiple of the world size)")
      ("top-k", po::value(&a.top_k)->default_value(a.top_k), "experts per token k")
      ("dtype", po::value(&a.dtype)->default_value(a.dtype), "hidden states and expert compute: fp32 or bf16")
      ("comm-dtype", po::value(&a.comm_dtype), "rows on the wire: fp32, bf16, fp16 (default: --dtype)")
      ("compare-dtypes", po::bool_switch(&a.compare_dtypes),
       "run fp32 and bf16 (ignores --dtype) and report bf16_over_fp32_ratio per point")
      ("selector", po::value(&a.selector)->default_value(a.selector), "router, blend or trust-first")
      ("iters", po::value(&a.iters)->default_value(a.iters), "timed iterations per point")
      ("warmup", po::value(&a.warmup)->default_value(a.warmup), "untimed iterations per point")
      ("backward", po::bool_switch(&a.backward), "also time forward+backward of out.sum()")
      ("seed", po::value(&a.seed)->default_value(a.seed), "weights, routing and inputs")
      ("json", po::value(&a.json), "write machine-readable records to FILE (rank 0)")
      ("weights", po::value(&a.weights), "Hugging Face safetensors with the router and experts of one layer")
      ("weights-prefix", po::value(&a.weights_prefix)->default_value(a.weights_prefix),
       "tensor name prefix in --weights (router '<prefix>gate.weight', experts '<prefix>experts.<e>.*')")
      ("input", po::value(&a.input), "dump mode: global batch [N, H] as .npy, split over the ranks")
      ("global-tokens", po::value(&a.global_tokens)->default_value(a.global_tokens),
       "dump mode: global batch of N tokens drawn from --seed, split over the ranks")
      ("dump-output", po::value(&a.dump_output),
       "run the global batch once and write the whole output [N, H] (fp32 .npy, rank 0); no timing");
}

LayerBenchOptions validate(const LayerBenchArgs& a) {
  LayerBenchOptions o;
  o.tokens = parse_size_list(a.tokens, "--tokens");
  for (const int64_t t : o.tokens)
    TRUSTEP_CHECK_AS(OptionError, t > 0, "invalid value '{}' for option '--tokens': every T must be > 0", a.tokens);
  TRUSTEP_CHECK_AS(OptionError, a.hidden > 0, "invalid value '{}' for option '--hidden': must be > 0", a.hidden);
  TRUSTEP_CHECK_AS(OptionError, a.ffn > 0, "invalid value '{}' for option '--ffn': must be > 0", a.ffn);
  TRUSTEP_CHECK_AS(OptionError, a.experts > 0, "invalid value '{}' for option '--experts': must be > 0", a.experts);
  TRUSTEP_CHECK_AS(OptionError, a.top_k >= 1 && a.top_k <= a.experts,
                   "invalid value '{}' for option '--top-k': must be in [1, --experts = {}]", a.top_k, a.experts);
  o.dtype = parse_dtype(a.dtype, "--dtype");
  TRUSTEP_CHECK_AS(OptionError, o.dtype == c10::ScalarType::Float || o.dtype == c10::ScalarType::BFloat16,
                   "invalid value '{}' for option '--dtype': bench layer takes fp32 or bf16", a.dtype);
  o.comm_dtype = o.dtype;
  if (!a.comm_dtype.empty()) {
    o.comm_dtype = parse_dtype(a.comm_dtype, "--comm-dtype");
    TRUSTEP_CHECK_AS(OptionError,
                     o.comm_dtype == c10::ScalarType::Float || o.comm_dtype == c10::ScalarType::BFloat16 ||
                         o.comm_dtype == c10::ScalarType::Half,
                     "invalid value '{}' for option '--comm-dtype': bench layer takes fp32, bf16 or fp16",
                     a.comm_dtype);
  }
  o.selector = routing::parse_mode(a.selector, "--selector");
  TRUSTEP_CHECK_AS(OptionError, a.iters > 0, "invalid value '{}' for option '--iters': must be > 0", a.iters);
  TRUSTEP_CHECK_AS(OptionError, a.warmup >= 0, "invalid value '{}' for option '--warmup': must be >= 0", a.warmup);
  o.hidden = a.hidden;
  o.ffn = a.ffn;
  o.experts = a.experts;
  o.top_k = a.top_k;
  o.compare_dtypes = a.compare_dtypes;
  o.iters = a.iters;
  o.warmup = a.warmup;
  o.backward = a.backward;
  o.seed = a.seed;
  check_json_path(a.json);
  o.json = a.json;
  for (const auto& [file, option] : {std::pair{a.weights, "--weights"}, std::pair{a.input, "--input"}})
    TRUSTEP_CHECK_AS(OptionError, file.empty() || std::filesystem::exists(file),
                     "invalid value '{}' for option '{}': no such file", file, option);
  TRUSTEP_CHECK_AS(OptionError, a.global_tokens >= 0,
                   "invalid value '{}' for option '--global-tokens': must be >= 0", a.global_tokens);
  TRUSTEP_CHECK_AS(OptionError, a.dump_output.empty() || !a.input.empty() || a.global_tokens > 0,
                   "option '--dump-output' needs a global batch: --input FILE.npy or --global-tokens N");
  TRUSTEP_CHECK_AS(OptionError, a.input.empty() || a.global_tokens == 0,
                   "options '--input' and '--global-tokens' exclude each other");
  check_writable(a.dump_output, "--dump-output");
  o.weights = a.weights;
  o.weights_prefix = a.weights_prefix;
  o.input = a.input;
  o.global_tokens = a.global_tokens;
  o.dump_output = a.dump_output;
  return o;
}

std::vector<LayerBenchRecord> measure_layer(comm::Communicator& comm, const LayerBenchOptions& o) {
  // E must split over the ranks: checked here, identically on every rank, before any exchange.
  (void)dispatch::ExpertLayout::make(o.experts, comm.size(), comm.rank());
  std::vector<LayerBenchRecord> records;
  for (const int64_t T : o.tokens) {
    if (!o.compare_dtypes) {
      records.push_back(measure_point(comm, o, T, o.dtype, o.comm_dtype));
      continue;
    }
    // Explicit --comm-dtype applies to both; otherwise the wire follows the compute dtype.
    const bool explicit_comm = o.comm_dtype != o.dtype;
    LayerBenchRecord f32 = measure_point(comm, o, T, at::kFloat, explicit_comm ? o.comm_dtype : at::kFloat);
    LayerBenchRecord b16 = measure_point(comm, o, T, at::kBFloat16, explicit_comm ? o.comm_dtype : at::kBFloat16);
    const double f = o.backward ? f32.fwd_bwd_us : f32.fwd_us;
    const double b = o.backward ? b16.fwd_bwd_us : b16.fwd_us;
    b16.bf16_over_fp32_ratio = b > 0 ? f / b : 0;
    records.push_back(f32);
    records.push_back(b16);
  }
  return records;
}

void dump_layer_output(comm::Communicator& comm, const LayerBenchOptions& o) {
  const c10::Device device = layer_device(comm);
  model::MoELayerImpl layer(layer_config(o, o.dtype, o.comm_dtype, device), comm);
  if (!o.weights.empty()) layer.load_hf(o.weights, o.weights_prefix);
  layer.to(device);

  // The global batch, identical on every rank; this rank's contiguous block of it.
  at::Tensor global;
  if (!o.input.empty()) {
    global = read_npy(o.input).to(at::kFloat);
  } else {
    at::Generator gen = at::detail::createCPUGenerator(o.seed);
    global = at::randn({o.global_tokens, o.hidden}, gen, at::TensorOptions().dtype(at::kFloat));
  }
  TRUSTEP_CHECK_AS(OptionError, global.dim() == 2 && global.size(1) == o.hidden,
                   "invalid value '{}' for option '--input': expected [N, {}] (--hidden)", o.input, o.hidden);
  const int64_t N = global.size(0), W = comm.size(), r = comm.rank();
  const int64_t begin = N * r / W, end = N * (r + 1) / W;
  at::NoGradGuard no_grad;
  const at::Tensor mine =
      layer.forward(global.narrow(0, begin, end - begin).to(device, o.dtype)).hidden.to(at::kFloat).cpu();

  // Blocks have different sizes: gather them padded to the largest, keep the real rows.
  const int64_t largest = (N + W - 1) / W;
  at::Tensor padded = at::zeros({largest, o.hidden}, at::kFloat);
  padded.narrow(0, 0, end - begin).copy_(mine);
  const at::Tensor all = comm.all_gather(padded, "bench.layer.dump");  // [W, largest, H]
  if (r != 0) return;
  std::vector<at::Tensor> blocks;
  for (int64_t p = 0; p < W; ++p) blocks.push_back(all[p].narrow(0, 0, N * (p + 1) / W - N * p / W));
  write_npy(o.dump_output, at::cat(blocks, 0));
  log::info("wrote {} [{}, {}] from {} ranks", o.dump_output, N, o.hidden, W);
}

int run_layer_bench(comm::Communicator& comm, const LayerBenchOptions& o) {
  if (!o.dump_output.empty()) {
    dump_layer_output(comm, o);
    return 0;
  }
  if (comm.rank() == 0)
    fmt::print("trustep bench layer: backend {}, {} ranks, H {}, F {}, E {}, k {}, selector {}, {} iters{}\n",
               comm.name(), comm.size(), o.hidden, o.ffn, o.experts, o.top_k, routing::mode_name(o.selector),
               o.iters, o.backward ? ", forward+backward" : "");
  const auto records = measure_layer(comm, o);
  if (comm.rank() != 0) return 0;
  fmt::print("{:>6} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6} {:>11} {:>6} {:>8} {:>8}\n", "T",
             "dtype", "comm", "fwd_us", "fwd_bwd_us", "gemm_f_us", "gemm_fb_us", "a2a_us", "gemm/", "a2a/",
             "tok/s/rank", "bf16x", "wMiB", "rssMiB");
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : records) {
    fmt::print(
        "{:>6} {:>5} {:>5} {:>10.1f} {:>10.1f} {:>10.1f} {:>10.1f} {:>10.1f} {:>6.3f} {:>6.3f} {:>11.0f} {:>6} {:>8.1f} "
        "{:>8.0f}\n",
        r.tokens, r.dtype, r.comm_dtype, r.fwd_us, r.fwd_bwd_us, r.gemm_fwd_us, r.gemm_fwd_bwd_us, r.raw_a2a_us,
        r.gemm_bound_ratio, r.a2a_share, r.tokens_per_s,
        r.bf16_over_fp32_ratio > 0 ? fmt::format("{:.2f}", r.bf16_over_fp32_ratio) : std::string("-"),
        r.expert_weight_mib, r.peak_rss_mib);
    std::string line = "       phases (us):";
    for (size_t p = 0; p < kLayerPhases.size(); ++p)
      line += fmt::format(" {} {:.1f}", kLayerPhases[p].substr(4), r.phase_us[p]);
    fmt::print("{}\n", line);
    out.push_back(to_json(r, o.backward));
  }
  fmt::print("gemm/ = gemm_bound_ratio (expert GEMMs alone / layer), a2a/ = raw all-to-all / layer; "
             "ratios and phases use {} times; wMiB = expert weights per rank, rssMiB = peak RSS per rank while "
             "timing (initialisation excluded)\n",
             o.backward ? "forward+backward" : "forward");
  if (!o.json.empty()) {
    nlohmann::json doc{{"benchmark", "layer"},
                       {"version", TRUSTEP_VERSION},
                       {"backend", comm.name()},
                       {"world", comm.size()},
                       {"selector", routing::mode_name(o.selector)},
                       {"iters", o.iters},
                       {"warmup", o.warmup},
                       {"backward", o.backward},
                       {"seed", o.seed},
                       {"ratio_definition",
                        "gemm_bound_ratio = gemm time / layer time; a2a_share_ratio = raw all-to-all time / layer "
                        "time (forward+backward times with --backward, else forward); bf16_over_fp32_ratio = fp32 "
                        "layer time / bf16 layer time; times: median over iterations of the slowest rank"},
                       {"records", out}};
    write_json_report(o.json, doc, "layer");
  }
  return 0;
}

}  // namespace trustep::bench
