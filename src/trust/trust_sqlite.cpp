// The reputation store: TrustTable::export_sqlite / import_sqlite through SQLite's C API, so
// trust learnt in one run can seed another. Schema: docs/formats.md#reputation-store-sqlite.
#include "trust/trust_table.h"

#include "core/error.h"
#include "core/log.h"

#include <ATen/ops/empty.h>
#include <fmt/ranges.h>
#include <sqlite3.h>

#include <memory>
#include <vector>

namespace trustep::trust {
namespace {

struct CloseDb {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct FinalizeStmt {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using DbPtr = std::unique_ptr<sqlite3, CloseDb>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, FinalizeStmt>;

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS runs(run TEXT PRIMARY KEY, layers INTEGER NOT NULL, contexts INTEGER NOT NULL, "
    "experts INTEGER NOT NULL, prior REAL NOT NULL, min_evidence REAL NOT NULL, created TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS trust(run TEXT NOT NULL, layer INTEGER NOT NULL, context INTEGER NOT NULL, "
    "expert INTEGER NOT NULL, trust REAL NOT NULL, evidence REAL NOT NULL, "
    "PRIMARY KEY(run, layer, context, expert));";

// One open database plus the names that go into every error message.
class Db {
 public:
  Db(const std::string& path, int flags, const char* op) : path_(path), op_(op) {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
    db_.reset(raw);  // a handle may come back even on failure and must still be closed
    if (rc != SQLITE_OK)
      throw Error(fmt::format("TrustTable::{}: cannot open SQLite file '{}': {}", op_, path_,
                              raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)),
                  TRUSTEP_ORIGIN);
    // Another process (a second job sharing the store) may hold the write lock briefly.
    sqlite3_busy_timeout(db_.get(), 10'000);
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("TrustTable::{}: SQLite file '{}': {}: {}", op_, path_, what, sqlite3_errmsg(db_.get())),
                TRUSTEP_ORIGIN);
  }
  [[noreturn]] void fail_plain(const std::string& what) const {
    throw Error(fmt::format("TrustTable::{}: SQLite file '{}': {}", op_, path_, what), TRUSTEP_ORIGIN);
  }

  void exec(const char* sql, const char* what) {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(what);
  }

  StmtPtr prepare(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) fail(fmt::format("preparing '{}'", sql));
    return StmtPtr(raw);
  }

  // Returns true while a row is available (SQLITE_ROW), false when done.
  bool step(sqlite3_stmt* s, const char* what) {
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(what);
  }

  void bind_text(sqlite3_stmt* s, int i, const std::string& v) {
    if (sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT) != SQLITE_OK)
      fail("binding a text parameter");
  }
  void bind_int(sqlite3_stmt* s, int i, int64_t v) {
    if (sqlite3_bind_int64(s, i, v) != SQLITE_OK) fail("binding an integer parameter");
  }
  void bind_double(sqlite3_stmt* s, int i, double v) {
    if (sqlite3_bind_double(s, i, v) != SQLITE_OK) fail("binding a real parameter");
  }

  sqlite3* get() const { return db_.get(); }

 private:
  std::string path_;
  const char* op_;
  DbPtr db_;
};

// Rolls back unless committed, so an error leaves the previous contents of the file.
class Transaction {
 public:
  explicit Transaction(Db& db) : db_(db) { db_.exec("BEGIN IMMEDIATE", "beginning a transaction"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit() {
    db_.exec("COMMIT", "committing");
    done_ = true;
  }

 private:
  Db& db_;
  bool done_ = false;
};

std::string shape_text(int64_t l, int64_t c, int64_t e) { return fmt::format("[{}, {}, {}]", l, c, e); }

}  // namespace

void TrustTable::export_sqlite(const std::string& path, const std::string& run) const {
  TRUSTEP_CHECK(!run.empty(), "TrustTable::export_sqlite: the run name for '{}' is empty", path);
  const TensorMap host = state();
  const float* trust = host.at("trust.value").const_data_ptr<float>();
  const float* evidence = host.at("trust.evidence").const_data_ptr<float>();
  const int64_t L = config_.layers, C = config_.contexts, E = config_.experts;

  Db db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "export_sqlite");
  Transaction tx(db);
  db.exec(kSchema, "creating the schema");
  {
    StmtPtr del = db.prepare("DELETE FROM trust WHERE run = ?1");
    db.bind_text(del.get(), 1, run);
    db.step(del.get(), "deleting the run's old rows");
  }
  {
    StmtPtr put = db.prepare(
        "INSERT OR REPLACE INTO runs(run, layers, contexts, experts, prior, min_evidence, created) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))");
    db.bind_text(put.get(), 1, run);
    db.bind_int(put.get(), 2, L);
    db.bind_int(put.get(), 3, C);
    db.bind_int(put.get(), 4, E);
    db.bind_double(put.get(), 5, config_.prior);
    db.bind_double(put.get(), 6, config_.min_evidence);
    db.step(put.get(), "writing the run");
  }
  StmtPtr row = db.prepare(
      "INSERT INTO trust(run, layer, context, expert, trust, evidence) VALUES(?1, ?2, ?3, ?4, ?5, ?6)");
  db.bind_text(row.get(), 1, run);  // bindings survive sqlite3_reset
  for (int64_t l = 0, i = 0; l < L; ++l)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t e = 0; e < E; ++e, ++i) {
        db.bind_int(row.get(), 2, l);
        db.bind_int(row.get(), 3, c);
        db.bind_int(row.get(), 4, e);
        db.bind_double(row.get(), 5, trust[i]);  // fp32 → REAL (double) is exact
        db.bind_double(row.get(), 6, evidence[i]);
        db.step(row.get(), "writing a trust row");
        sqlite3_reset(row.get());
      }
  tx.commit();
  log::debug("trust table {} exported to '{}' as run '{}'", shape_text(L, C, E), path, run);
}

void TrustTable::import_sqlite(const std::string& path, const std::string& run) {
  const int64_t L = config_.layers, C = config_.contexts, E = config_.experts;
  Db db(path, SQLITE_OPEN_READONLY, "import_sqlite");
  {
    StmtPtr find = db.prepare("SELECT layers, contexts, experts FROM runs WHERE run = ?1");
    db.bind_text(find.get(), 1, run);
    if (!db.step(find.get(), "reading the run")) {
      std::vector<std::string> runs;
      StmtPtr all = db.prepare("SELECT run FROM runs ORDER BY run");
      while (db.step(all.get(), "listing runs"))
        runs.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(all.get(), 0)));
      db.fail_plain(fmt::format("run '{}' does not exist (runs there: [{}])", run, fmt::join(runs, ", ")));
    }
    const int64_t fl = sqlite3_column_int64(find.get(), 0), fc = sqlite3_column_int64(find.get(), 1),
                  fe = sqlite3_column_int64(find.get(), 2);
    if (fl != L || fc != C || fe != E)
      db.fail_plain(fmt::format("run '{}' has shape [layers, contexts, experts] = {}, but this table is {}", run,
                                shape_text(fl, fc, fe), shape_text(L, C, E)));
  }

  at::Tensor trust = at::empty({L, C, E}, at::kFloat);     // [L, C, E] fp32, CPU
  at::Tensor evidence = at::empty({L, C, E}, at::kFloat);  // [L, C, E] fp32, CPU
  float* tp = trust.mutable_data_ptr<float>();
  float* ep = evidence.mutable_data_ptr<float>();
  std::vector<bool> seen(static_cast<size_t>(L * C * E), false);
  int64_t rows = 0;
  StmtPtr read = db.prepare("SELECT layer, context, expert, trust, evidence FROM trust WHERE run = ?1");
  db.bind_text(read.get(), 1, run);
  while (db.step(read.get(), "reading trust rows")) {
    for (int col = 0; col < 5; ++col) {
      const int type = sqlite3_column_type(read.get(), col);
      if (type != SQLITE_INTEGER && !(col >= 3 && type == SQLITE_FLOAT))
        db.fail_plain(fmt::format("run '{}': column '{}' of a trust row holds a {} value", run,
                                  sqlite3_column_name(read.get(), col), type == SQLITE_NULL ? "NULL" : "non-numeric"));
    }
    const int64_t l = sqlite3_column_int64(read.get(), 0), c = sqlite3_column_int64(read.get(), 1),
                  e = sqlite3_column_int64(read.get(), 2);
    if (l < 0 || l >= L || c < 0 || c >= C || e < 0 || e >= E)
      db.fail_plain(fmt::format("run '{}': row (layer {}, context {}, expert {}) is outside shape {}", run, l, c, e,
                                shape_text(L, C, E)));
    const int64_t i = (l * C + c) * E + e;
    // Our schema's primary key forbids duplicates; a hand-made file might not.
    if (seen[static_cast<size_t>(i)])
      db.fail_plain(fmt::format("run '{}': row (layer {}, context {}, expert {}) appears twice", run, l, c, e));
    seen[static_cast<size_t>(i)] = true;
    tp[i] = static_cast<float>(sqlite3_column_double(read.get(), 3));
    ep[i] = static_cast<float>(sqlite3_column_double(read.get(), 4));
    ++rows;
  }
  if (rows != L * C * E)
    db.fail_plain(fmt::format("run '{}' has {} trust rows, expected {} for shape {}", run, rows, L * C * E,
                              shape_text(L, C, E)));
  set_tables(trust, evidence);  // checks the value ranges, copies to the device, clears credit
  log::debug("trust table {} imported from run '{}' of '{}'", shape_text(L, C, E), run, path);
}

}  // namespace trustep::trust
