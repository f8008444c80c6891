// The program's own timeline: named phases (route, permute, exchange, experts, combine, and the
// training step's forward, backward, all-reduce, optimizer, trust) recorded as spans with their
// start and duration. Off by default; a disabled Scope costs one relaxed atomic load.
//
// Used for two things: per-phase time breakdowns in the benchmarks (`totals()`), and a Chrome
// trace (`--trace FILE`, opens in chrome://tracing or ui.perfetto.dev), one process per rank.
// On a GPU, host-side spans only show launch time unless a sync hook is installed
// (`set_sync`): then every span waits for the device at its start and end, which makes the
// times honest and the run slower. Spans are recorded from any thread (autograd's backward may
// run on another one) into one buffer under a mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace trustep::trace {

struct Span {
  const char* name = "";  // static string: "moe.route", "train.backward", ...
  int64_t start_ns = 0;   // steady_clock, since the recorder's origin (see set_origin)
  int64_t dur_ns = 0;
  int layer = -1;         // MoE layer, -1 when none
  int64_t step = -1;      // training step (set_step), -1 when none
  int depth = 0;          // nesting depth on the recording thread: 0 = top level
  uint64_t thread = 0;    // small id of the recording thread (0 = the first one seen)
};

// Turns recording on or off (process-wide). Turning it on does not clear earlier spans.
void enable(bool on);
bool enabled();
// Spans start at 0 here: call after a barrier on every rank so the ranks' timelines line up.
void set_origin();
// Tags the spans that follow with a training step.
void set_step(int64_t step);
// Called at the start and end of every span while recording (e.g. a device synchronisation).
void set_sync(std::function<void()> sync);

// Drops every recorded span.
void clear();
// The spans recorded so far, in the order they ended.
std::vector<Span> spans();

// Total and count per span name (every depth), in microseconds.
struct Total {
  double us = 0;
  int64_t count = 0;
};
std::map<std::string, Total> totals(const std::vector<Span>& spans);

// This rank's spans as Chrome trace events (a JSON array body without brackets, "" if none):
// complete ("X") events with pid = rank, plus a process-name record "rank R".
std::string chrome_events(const std::vector<Span>& spans, int rank);
// One Chrome trace document from every rank's chrome_events().
std::string chrome_document(const std::vector<std::string>& rank_events, const std::string& title);

// RAII span; records nothing when tracing is off.
class Scope {
 public:
  explicit Scope(const char* name, int layer = -1);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* name_;
  int layer_;
  int64_t start_ns_ = -1;  // -1: not recording
};

}  // namespace trustep::trace
