#include "core/log.h"

#include "core/error.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <memory>

namespace trustep::log {
namespace {

std::shared_ptr<spdlog::logger> make_logger() {
  // stderr, unbuffered-enough for mpirun's output forwarding; thread-safe sink (the watchdog logs).
  auto logger = std::make_shared<spdlog::logger>("trustep", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("[trustep r? %L] %v");
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  return logger;
}

}  // namespace

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

void set_rank(int rank) { logger().set_pattern(fmt::format("[trustep r{} %L] %v", rank)); }

void set_level(const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off")
    throw OptionError(fmt::format("invalid value '{}' for option '--log-level': expected trace, debug, info, "
                                  "warn, error or off",
                                  level),
                      TRUSTEP_ORIGIN);
  logger().set_level(parsed);
}

}  // namespace trustep::log
