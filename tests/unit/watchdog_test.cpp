#include "comm/watchdog.h"
#include "core/error.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace trustep::comm {
namespace {

using namespace std::chrono_literals;

struct Fired {
  std::mutex mutex;
  std::string explanation;
  std::atomic<int> count{0};
  Watchdog::AbortFn fn() {
    return [this](const std::string& why) {
      std::lock_guard<std::mutex> lock(mutex);
      explanation = why;
      ++count;
    };
  }
};

bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST(Watchdog, ExplainsAnOverdueCollective) {
  Fired fired;
  Watchdog dog(3, 0.1, fired.fn());
  auto scope = dog.watch(OpInfo{"all_to_all_v", "dispatch.send", 42, 4, {3, 0, 5, 1}});
  ASSERT_TRUE(wait_for([&] { return fired.count > 0; }, 5000ms));
  std::lock_guard<std::mutex> lock(fired.mutex);
  EXPECT_NE(fired.explanation.find("watchdog: rank 3: collective all_to_all_v #42 at boundary 'dispatch.send' "
                                   "(peers: all 4 ranks, sending rows [3, 0, 5, 1]) has not finished after"),
            fired.explanation.npos)
      << fired.explanation;
  EXPECT_NE(fired.explanation.find("--comm-timeout 0.1 s"), fired.explanation.npos);
}

TEST(Watchdog, QuietWhenCollectivesFinishInTime) {
  Fired fired;
  {
    Watchdog dog(0, 0.2, fired.fn());
    for (int i = 0; i < 5; ++i) {
      auto scope = dog.watch(OpInfo{"barrier", "", i, 2, {}});
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(dog.pending(), 0);
    std::this_thread::sleep_for(400ms);
  }
  EXPECT_EQ(fired.count, 0);
}

TEST(Watchdog, FollowsAsyncWorkUntilDone) {
  Fired fired;
  std::atomic<bool> done{false};
  Watchdog dog(1, 0.3, fired.fn());
  dog.watch_async(OpInfo{"all_to_all_v", "dispatch.send", 1, 2, {1, 1}}, [&] { return done.load(); });
  EXPECT_EQ(dog.pending(), 1);
  done = true;
  ASSERT_TRUE(wait_for([&] { return dog.pending() == 0; }, 2000ms));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(fired.count, 0);
}

TEST(Watchdog, AsyncWorkThatNeverFinishesFires) {
  Fired fired;
  Watchdog dog(1, 0.1, fired.fn());
  dog.watch_async(OpInfo{"all_reduce", "grads", 9, 2, {}}, [] { return false; });
  ASSERT_TRUE(wait_for([&] { return fired.count > 0; }, 5000ms));
  EXPECT_EQ(fired.count, 1);
}

TEST(Watchdog, RejectsNonPositiveTimeout) {
  EXPECT_THROW(Watchdog(0, 0, [](const std::string&) {}), OptionError);
}

}  // namespace
}  // namespace trustep::comm
