// The header every collective exchanges before it moves data: each rank contributes one
// fixed-size int64 row (what it is doing, what it declared, what it holds, its send counts)
// and every rank verifies all rows the same way. A disagreement therefore becomes the same
// error on every rank, before any payload moves, instead of a hang or garbage.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace trustep::comm {

enum class CollectiveOp : int64_t { kAllToAllV = 1, kAllReduce = 2, kAllGather = 3, kBroadcast = 4, kBarrier = 5 };
const char* op_name(CollectiveOp op);

// What one rank declares and holds as it enters a collective.
struct HeaderFacts {
  CollectiveOp op = CollectiveOp::kBarrier;
  int64_t seq = 0;             // collective sequence number on this rank
  std::string boundary;        // the first kBoundaryChars characters travel
  int64_t layer = -1;
  int64_t declared_dtype = 0;  // WireDtype codes
  int64_t actual_dtype = 0;
  int64_t expected_device = -1;  // c10::DeviceType, -1: any
  int64_t actual_device = 0;
  int64_t expected_ndim = -1;    // -1: any
  int64_t actual_ndim = 0;
  int64_t contiguous = 1;
  int64_t policy = 0;          // ContractPolicy
  int64_t rows = 0;            // all-to-all: rows held; others: numel
  int64_t row_width = 0;       // all-to-all: elements per row; others: numel
  int64_t arg = 0;             // reduce op or broadcast root
  std::vector<int64_t> counts; // all-to-all send counts, one per peer (length checked)
};

constexpr int kBoundaryChars = 32;
int64_t header_length(int world);
std::vector<int64_t> pack_header(const HeaderFacts& facts, int world);
HeaderFacts unpack_header(const int64_t* row, int world);

// Rows that `rank` receives from each peer, read from the gathered all-to-all headers.
std::vector<int64_t> recv_counts_from(const std::vector<int64_t>& gathered, int world, int rank);

// `gathered` holds world rows of header_length(world). Throws CommError or ContractViolation
// (collective() == true) with a message that depends only on `gathered`, hence identical on
// every rank. Returns normally when all ranks agree and every rank's input is valid.
void verify_headers(const std::vector<int64_t>& gathered, int world);

}  // namespace trustep::comm
