// Explains a hang instead of hanging: every collective registers here while it runs; one
// that outlives the timeout is reported (op, sequence number, boundary, rank, peers) and the
// whole job is aborted through the backend's abort function (MPI_Abort / ncclCommAbort).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace trustep::comm {

// What a collective is, kept cheap to build (once per call); formatted only if the watchdog fires.
struct OpInfo {
  const char* op = "";              // "all_to_all_v", "all_reduce", ... (static strings)
  std::string boundary;             // contract boundary or caller tag; may be empty
  int64_t seq = 0;                  // this rank's collective sequence number
  int world = 1;                    // every collective spans all ranks of the communicator
  std::vector<int64_t> send_counts; // all-to-all: rows this rank sends to each peer
};

class Watchdog {
  using Clock = std::chrono::steady_clock;
  struct Pending;

 public:
  // Called once, from the watchdog thread, with the explanation; expected not to return.
  using AbortFn = std::function<void(const std::string& explanation)>;

  Watchdog(int rank, double timeout_s, AbortFn abort);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // RAII registration of a blocking collective.
  class Scope {
   public:
    Scope(Watchdog* owner, std::list<Pending>::iterator it) : owner_(owner), it_(it) {}
    Scope(Scope&& other) noexcept : owner_(other.owner_), it_(other.it_) { other.owner_ = nullptr; }
    Scope(const Scope&) = delete;
    ~Scope();

   private:
    Watchdog* owner_;
    std::list<Pending>::iterator it_;
  };
  Scope watch(OpInfo info);
  // An asynchronous collective (e.g. NCCL on a stream) that is finished once `done()` is true.
  void watch_async(OpInfo info, std::function<bool()> done);

  double timeout_s() const { return timeout_s_; }
  int64_t pending() const;

 private:
  void loop();
  void fire(const Pending& op, double waited_s);

  int rank_;
  double timeout_s_;
  AbortFn abort_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::list<Pending> pending_;
  bool stop_ = false;
  std::thread thread_;
};

struct Watchdog::Pending {
  OpInfo info;
  Clock::time_point start;
  std::function<bool()> done;  // empty for blocking ops (removed by their Scope)
};

}  // namespace trustep::comm
