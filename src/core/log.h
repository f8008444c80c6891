// Process-wide logging through spdlog, every line prefixed with the rank.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace trustep::log {

// Sets the rank shown in the prefix ("[trustep r0 I] ..."); call once the rank is known.
void set_rank(int rank);
// "trace", "debug", "info", "warn", "error", "off"; throws OptionError otherwise.
void set_level(const std::string& level);
spdlog::logger& logger();

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) { logger().debug(f, std::forward<Args>(args)...); }
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) { logger().info(f, std::forward<Args>(args)...); }
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) { logger().warn(f, std::forward<Args>(args)...); }
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) { logger().error(f, std::forward<Args>(args)...); }

}  // namespace trustep::log
