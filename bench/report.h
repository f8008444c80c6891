// Shared by the benchmark drivers: timing statistics across ranks and --json output.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace trustep::bench {

// Median (0 for none).
double median(std::vector<double> v);
// MPI_Barrier over the world when MPI is active: every rank starts a timed step together.
void sync_world();
// Element-wise max over ranks, in place: a collective step is as fast as its slowest rank.
void max_over_ranks(std::vector<double>& values);

// The spans a step is broken into (core/trace.h names), in display order.
extern const std::vector<std::string> kLayerPhases;  // route, permute, exchange, experts, combine, exchange.bwd
extern const std::vector<std::string> kTrainPhases;  // train.* then the MoE layers' spans
// Runs fn with span recording on (clearing earlier spans) and returns the total µs of each
// name in `names` (0 when absent), in that order. With sync (device backends), every span
// waits for the device at both ends.
std::vector<double> traced_phases(const std::function<void()>& fn, const std::vector<std::string>& names,
                                  const std::function<void()>& sync = {});

// Peak resident set size of this process (VmHWM) in MiB, and a reset of that peak (Linux
// clear_refs; silently unavailable elsewhere) so one point's peak can be read on its own.
double peak_rss_mib();
void reset_peak_rss();

// Before any work (option validation): throws OptionError naming --json when `path` cannot be
// created or written, so a long run is not lost to a typo at the end.
void check_json_path(const std::string& path);
// Writes `doc` (pretty-printed) to `path`; `bench` names the benchmark in errors and the log.
void write_json_report(const std::string& path, const nlohmann::json& doc, const std::string& bench);

}  // namespace trustep::bench
