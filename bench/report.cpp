#include "bench/report.h"

#include "core/error.h"
#include "core/log.h"

#include <filesystem>
#include <fstream>

namespace trustep::bench {

void check_json_path(const std::string& path) {
  if (path.empty()) return;
  const bool existed = std::filesystem::exists(path);
  const bool ok = std::ofstream(path, std::ios::app).good();
  if (!existed) std::filesystem::remove(path);
  TRUSTEP_CHECK_AS(OptionError, ok, "invalid value '{}' for option '--json': cannot write this file", path);
}

void write_json_report(const std::string& path, const nlohmann::json& doc, const std::string& bench) {
  std::ofstream out(path);
  TRUSTEP_CHECK(out.good(), "bench {}: cannot write --json file '{}'", bench, path);
  out << doc.dump(2) << "\n";
  log::info("wrote {}", path);
}

}  // namespace trustep::bench
