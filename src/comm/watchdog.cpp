#include "comm/watchdog.h"

#include "core/error.h"
#include "core/log.h"

#include <fmt/ranges.h>

#include <algorithm>

namespace trustep::comm {

Watchdog::Watchdog(int rank, double timeout_s, AbortFn abort)
    : rank_(rank), timeout_s_(timeout_s), abort_(std::move(abort)) {
  TRUSTEP_CHECK_AS(OptionError, timeout_s > 0, "invalid value '{}' for option '--comm-timeout': must be > 0",
                   timeout_s);
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Watchdog::Scope::~Scope() {
  if (!owner_) return;
  std::lock_guard<std::mutex> lock(owner_->mutex_);
  owner_->pending_.erase(it_);
}

Watchdog::Scope Watchdog::watch(OpInfo info) {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.push_back(Pending{std::move(info), Clock::now(), {}});
  return Scope(this, std::prev(pending_.end()));
}

void Watchdog::watch_async(OpInfo info, std::function<bool()> done) {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.push_back(Pending{std::move(info), Clock::now(), std::move(done)});
}

int64_t Watchdog::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(pending_.size());
}

void Watchdog::loop() {
  // Poll often enough to fire within ~5% of the timeout, but never spin.
  const auto poll = std::chrono::duration<double>(std::clamp(timeout_s_ / 20.0, 0.01, 1.0));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, poll);
    if (stop_) break;
    const auto now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->done && it->done()) {
        it = pending_.erase(it);
        continue;
      }
      const double waited = std::chrono::duration<double>(now - it->start).count();
      if (waited > timeout_s_) {
        Pending op = *it;
        lock.unlock();
        fire(op, waited);  // does not return when the abort function aborts
        return;
      }
      ++it;
    }
  }
}

void Watchdog::fire(const Pending& op, double waited_s) {
  std::string boundary = op.info.boundary.empty() ? "" : fmt::format(" at boundary '{}'", op.info.boundary);
  std::string peers = fmt::format("all {} ranks", op.info.world);
  if (!op.info.send_counts.empty() && op.info.send_counts.size() <= 16)
    peers += fmt::format(", sending rows [{}]", fmt::join(op.info.send_counts, ", "));
  std::string explanation = fmt::format(
      "watchdog: rank {}: collective {} #{}{} (peers: {}) has not finished after {:.1f} s "
      "(--comm-timeout {} s). A peer probably skipped this collective, is stuck in another one, "
      "or died. Aborting the whole job.",
      rank_, op.info.op, op.info.seq, boundary, peers, waited_s, timeout_s_);
  log::error("{}", explanation);
  abort_(explanation);
}

}  // namespace trustep::comm
