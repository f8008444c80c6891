#include "cli/train_options.h"

namespace trustep::cli {

void add_train_options(po::options_description& desc, TrainArgs& a) {
  po::options_description model("model");
  model.add_options()
      ("hidden", po::value(&a.hidden)->default_value(a.hidden), "hidden size H")
      ("layers", po::value(&a.layers)->default_value(a.layers), "transformer blocks (each with an MoE FFN)")
      ("heads", po::value(&a.heads)->default_value(a.heads), "attention query heads (H divisible by it)")
      ("kv-heads", po::value(&a.kv_heads)->default_value(a.kv_heads), "key/value heads (GQA; divides --heads)")
      ("ffn", po::value(&a.ffn)->default_value(a.ffn), "expert intermediate size F")
      ("experts", po::value(&a.experts)->default_value(a.experts), "global experts E (a multiple of the world size)")
      ("top-k", po::value(&a.top_k)->default_value(a.top_k), "experts per token k")
      ("seq-len", po::value(&a.seq_len)->default_value(a.seq_len), "tokens per sequence")
      ("dtype", po::value(&a.dtype)->default_value(a.dtype), "compute dtype: fp32 or bf16 (fp32 master weights)")
      ("comm-dtype", po::value(&a.comm_dtype), "token rows on the wire: fp32, bf16, fp16 (default: --dtype)");
  po::options_description routing("routing and trust");
  routing.add_options()
      ("mode", po::value(&a.mode)->default_value(a.mode), "selector: router, blend or trust-first")
      ("alpha", po::value(&a.alpha)->default_value(a.alpha), "blend: weight of the router probability")
      ("epsilon", po::value(&a.epsilon)->default_value(a.epsilon), "trust-first: exploration probability")
      ("overflow", po::value(&a.overflow)->default_value(a.overflow), "capacity policy: dropless, drop, reroute")
      ("capacity-factor", po::value(&a.capacity_factor)->default_value(a.capacity_factor),
       "drop/reroute: slots per expert = factor · T · k / E")
      ("contexts-from", po::value(&a.context_source)->default_value(a.context_source),
       "token contexts: labels (task family of the synthetic data) or kmeans (online clusters per layer)")
      ("contexts", po::value(&a.contexts)->default_value(a.contexts), "kmeans: clusters per layer")
      ("trust-prior", po::value(&a.trust_prior)->default_value(a.trust_prior), "trust without evidence")
      ("trust-min-evidence", po::value(&a.trust_min_evidence)->default_value(a.trust_min_evidence),
       "token-slot uses before stored trust replaces the prior")
      ("trust-lr", po::value(&a.trust_lr)->default_value(a.trust_lr), "EMA rate η of the trust update")
      ("trust-temperature", po::value(&a.trust_temperature)->default_value(a.trust_temperature),
       "temperature of the per-token quality sigmoid")
      ("trust-baseline", po::value(&a.trust_baseline)->default_value(a.trust_baseline),
       "a token's loss is compared with the mean of its context, or of its (context, target token) bucket "
       "(context-target: controls for token difficulty)");
  po::options_description optim("optimisation");
  optim.add_options()
      ("steps", po::value(&a.steps)->default_value(a.steps), "total optimisation steps")
      ("batch", po::value(&a.batch)->default_value(a.batch), "sequences per rank per step")
      ("lr", po::value(&a.lr)->default_value(a.lr), "peak learning rate")
      ("min-lr", po::value(&a.min_lr)->default_value(a.min_lr), "learning rate at the end of the cosine")
      ("warmup", po::value(&a.warmup)->default_value(a.warmup), "linear warm-up steps")
      ("weight-decay", po::value(&a.weight_decay)->default_value(a.weight_decay), "AdamW decoupled weight decay")
      ("beta1", po::value(&a.beta1)->default_value(a.beta1), "AdamW β1")
      ("beta2", po::value(&a.beta2)->default_value(a.beta2), "AdamW β2")
      ("clip", po::value(&a.clip)->default_value(a.clip), "global gradient-norm clip (0: off)")
      ("balance-coef", po::value(&a.balance_coef)->default_value(a.balance_coef), "load-balancing loss weight")
      ("z-coef", po::value(&a.z_coef)->default_value(a.z_coef), "router z-loss weight")
      ("seed", po::value(&a.seed)->default_value(a.seed), "initialisation, data, routing noise: one seed")
      ("data", po::value(&a.data), "train on this plain-text file (default: the built-in synthetic corpus)")
      ("check-finite", po::bool_switch(&a.check_finite), "stop every rank at the first layer whose router logits or LM logits hold NaN/Inf");
  po::options_description faults("fault injection");
  faults.add_options()
      ("poison-expert", po::value(&a.poison_expert), "replace these experts' outputs with noise (list: 3,5)")
      ("poison-from", po::value(&a.poison_from)->default_value(a.poison_from), "first poisoned step")
      ("poison-kind", po::value(&a.poison_kind)->default_value(a.poison_kind),
       "noise (N(0,1) scaled like the real output) or nan (a NaN fault, for --check-finite)");
  po::options_description output("output and checkpoints");
  output.add_options()
      ("out", po::value(&a.out)->default_value(a.out), "run directory: metrics.jsonl, plots, checkpoints/")
      ("checkpoint-every", po::value(&a.checkpoint_every)->default_value(a.checkpoint_every),
       "checkpoint every N steps (0: only at the end)")
      ("keep-last", po::value(&a.keep_last)->default_value(a.keep_last), "checkpoints kept (0: all)")
      ("resume", po::value(&a.resume), "continue from a checkpoint (root or step dir; 'auto': OUT/checkpoints)")
      ("stop-after", po::value(&a.stop_after)->default_value(a.stop_after),
       "stop after N steps of this run, with a checkpoint (0: run to --steps)")
      ("log-every", po::value(&a.log_every)->default_value(a.log_every), "progress line every N steps")
      ("trust-plot-layer", po::value(&a.trust_plot_layer)->default_value(a.trust_plot_layer),
       "layer of the trust heatmap")
      ("no-plots", po::bool_switch(&a.no_plots), "skip the PNG plots at the end")
      ("trace", po::value(&a.trace), "write a Chrome trace (JSON) of the last --trace-steps steps to FILE")
      ("trace-steps", po::value(&a.trace_steps)->default_value(a.trace_steps), "steps in --trace");
  desc.add(model).add(routing).add(optim).add(faults).add(output);
}

void add_infer_options(po::options_description& desc, InferArgs& a) {
  desc.add_options()
      ("checkpoint", po::value(&a.checkpoint), "checkpoint root (follows 'latest') or step directory")
      ("prompt", po::value(&a.prompt), "prompt text (bytes)")
      ("max-new-tokens", po::value(&a.max_new_tokens)->default_value(a.max_new_tokens), "tokens to generate")
      ("temperature", po::value(&a.temperature)->default_value(a.temperature), "0: greedy; > 0: sampling")
      ("seed", po::value(&a.seed)->default_value(a.seed), "sampling seed (identical on every rank)")
      ("context", po::value(&a.context)->default_value(a.context),
       "context of the prompt's tokens for trust routing: a label name or index, or auto (from the prompt's "
       "task prefix)")
      ("mode", po::value(&a.mode), "selector mode (default: the one the model was trained with)");
}

}  // namespace trustep::cli
