// Shared by the benchmark drivers: --json output.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace trustep::bench {

// Before any work (option validation): throws OptionError naming --json when `path` cannot be
// created or written, so a long run is not lost to a typo at the end.
void check_json_path(const std::string& path);
// Writes `doc` (pretty-printed) to `path`; `bench` names the benchmark in errors and the log.
void write_json_report(const std::string& path, const nlohmann::json& doc, const std::string& bench);

}  // namespace trustep::bench
