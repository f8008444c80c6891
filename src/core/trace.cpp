#include "core/trace.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <mutex>

namespace trustep::trace {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_enabled{false};
std::atomic<int64_t> g_origin_ns{0};
std::atomic<int64_t> g_step{-1};
std::atomic<uint64_t> g_next_thread{0};
std::mutex g_mutex;  // guards g_spans and g_sync
std::vector<Span> g_spans;
std::function<void()> g_sync;

thread_local int t_depth = 0;
thread_local uint64_t t_thread = g_next_thread.fetch_add(1);

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void run_sync() {
  std::function<void()> sync;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    sync = g_sync;
  }
  if (sync) sync();
}

// Span names are static identifiers; escape anyway so a stray quote cannot break the file.
std::string json_string(const char* s) {
  std::string out = "\"";
  for (; *s; ++s) {
    if (*s == '"' || *s == '\\') out += '\\';
    out += *s;
  }
  return out + "\"";
}

}  // namespace

void enable(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_origin() { g_origin_ns.store(now_ns()); }
void set_step(int64_t step) { g_step.store(step); }

void set_sync(std::function<void()> sync) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_sync = std::move(sync);
}

void clear() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_spans.clear();
}

std::vector<Span> spans() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_spans;
}

std::map<std::string, Total> totals(const std::vector<Span>& spans) {
  std::map<std::string, Total> out;
  for (const Span& s : spans) {
    Total& t = out[s.name];
    t.us += static_cast<double>(s.dur_ns) * 1e-3;
    ++t.count;
  }
  return out;
}

std::string chrome_events(const std::vector<Span>& spans, int rank) {
  std::string out = fmt::format(R"({{"name":"process_name","ph":"M","pid":{},"tid":0,"args":{{"name":"rank {}"}}}})",
                                rank, rank);
  for (const Span& s : spans) {
    // Category: the part before the first dot ("moe", "train", "comm").
    std::string name = s.name;
    const std::string cat = name.substr(0, name.find('.'));
    out += fmt::format(R"(,{{"name":{},"cat":"{}","ph":"X","pid":{},"tid":{},"ts":{:.3f},"dur":{:.3f},"args":{{)",
                       json_string(s.name), cat, rank, s.thread, static_cast<double>(s.start_ns) * 1e-3,
                       static_cast<double>(s.dur_ns) * 1e-3);
    std::string args;
    if (s.layer >= 0) args += fmt::format(R"("layer":{})", s.layer);
    if (s.step >= 0) args += fmt::format(R"({}"step":{})", args.empty() ? "" : ",", s.step);
    out += args + "}}";
  }
  return out;
}

std::string chrome_document(const std::vector<std::string>& rank_events, const std::string& title) {
  std::string out = "{\"traceEvents\":[";
  bool first = true;
  for (const auto& events : rank_events) {
    if (events.empty()) continue;
    out += first ? "\n" : ",\n";
    out += events;
    first = false;
  }
  out += fmt::format("\n],\"displayTimeUnit\":\"ms\",\"otherData\":{{\"title\":{}}}}}\n", json_string(title.c_str()));
  return out;
}

Scope::Scope(const char* name, int layer) : name_(name), layer_(layer) {
  if (!enabled()) return;
  run_sync();
  ++t_depth;
  start_ns_ = now_ns();
}

Scope::~Scope() {
  if (start_ns_ < 0) return;
  try {
    run_sync();
  } catch (...) {
    // A failing device surfaces at the next real synchronisation; a destructor must not throw.
  }
  const int64_t end = now_ns();
  --t_depth;
  Span s;
  s.name = name_;
  s.start_ns = start_ns_ - g_origin_ns.load();
  s.dur_ns = end - start_ns_;
  s.layer = layer_;
  s.step = g_step.load();
  s.depth = t_depth;
  s.thread = t_thread;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_spans.push_back(s);
}

}  // namespace trustep::trace
