#include "bench/report.h"

#include "core/error.h"
#include "core/log.h"
#include "core/options.h"
#include "core/trace.h"

#include "comm/mpi_runtime.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace trustep::bench {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void sync_world() {
  if (comm::mpi_active()) MPI_Barrier(MPI_COMM_WORLD);
}

void max_over_ranks(std::vector<double>& v) {
  if (comm::mpi_active())
    MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
}

const std::vector<std::string> kLayerPhases{"moe.route", "moe.permute", "moe.exchange",
                                            "moe.experts", "moe.combine", "moe.exchange.bwd"};
const std::vector<std::string> kTrainPhases{
    "train.data",  "train.forward", "train.backward", "train.allreduce", "train.optimizer",
    "train.trust", "moe.layer",     "moe.route",      "moe.permute",     "moe.exchange",
    "moe.experts", "moe.combine",   "moe.exchange.bwd"};

std::vector<double> traced_phases(const std::function<void()>& fn, const std::vector<std::string>& names,
                                  const std::function<void()>& sync) {
  trace::clear();
  trace::set_sync(sync);
  trace::enable(true);
  try {
    fn();
  } catch (...) {
    trace::enable(false);
    trace::set_sync({});
    throw;
  }
  trace::enable(false);
  trace::set_sync({});
  const auto totals = trace::totals(trace::spans());
  std::vector<double> out;
  for (const auto& name : names) {
    auto it = totals.find(name);
    out.push_back(it == totals.end() ? 0.0 : it->second.us);
  }
  return out;
}

double peak_rss_mib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // "VmHWM:  123456 kB"
  return 0;
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

void check_json_path(const std::string& path) { check_writable(path, "--json"); }

void write_json_report(const std::string& path, const nlohmann::json& doc, const std::string& bench) {
  std::ofstream out(path);
  TRUSTEP_CHECK(out.good(), "bench {}: cannot write --json file '{}'", bench, path);
  out << doc.dump(2) << "\n";
  log::info("wrote {}", path);
}

}  // namespace trustep::bench
