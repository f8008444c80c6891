// Shared by the benchmark drivers: timing statistics across ranks and --json output.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace trustep::bench {

// Median (0 for none).
double median(std::vector<double> v);
// MPI_Barrier over the world when MPI is active: every rank starts a timed step together.
void sync_world();
// Element-wise max over ranks, in place: a collective step is as fast as its slowest rank.
void max_over_ranks(std::vector<double>& values);

// Before any work (option validation): throws OptionError naming --json when `path` cannot be
// created or written, so a long run is not lost to a typo at the end.
void check_json_path(const std::string& path);
// Writes `doc` (pretty-printed) to `path`; `bench` names the benchmark in errors and the log.
void write_json_report(const std::string& path, const nlohmann::json& doc, const std::string& bench);

}  // namespace trustep::bench
