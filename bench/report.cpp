#include "bench/report.h"

#include "core/error.h"
#include "core/log.h"

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
