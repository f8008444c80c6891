#include "comm/mpi_communicator.h"

#include "comm/mpi_runtime.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"

#include <ATen/ops/empty.h>

#include <climits>

namespace trustep::comm {
namespace {

MPI_Comm dup_world() {
  TRUSTEP_CHECK_AS(CommError, mpi_active(),
                   "backend mpi needs MPI: start the program under mpirun (or use --backend self)");
  MPI_Comm comm;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  return comm;
}

// A transfer unit for `bytes`-sized blocks: MPI_BYTE while byte counts fit in int, else a
// contiguous type of `block` bytes (counts then in blocks).
struct Unit {
  MPI_Datatype type = MPI_BYTE;
  int64_t bytes = 1;
  bool owned = false;
  Unit(int64_t max_total_bytes, int64_t block) {
    if (max_total_bytes <= INT_MAX) return;
    TRUSTEP_CHECK_AS(CommError, block <= INT_MAX, "row of {} bytes is too large for MPI", block);
    MPI_Type_contiguous(static_cast<int>(block), MPI_BYTE, &type);
    MPI_Type_commit(&type);
    bytes = block;
    owned = true;
  }
  ~Unit() {
    if (owned) MPI_Type_free(&type);
  }
  int count(int64_t nbytes) const {
    const int64_t n = nbytes / bytes;
    TRUSTEP_CHECK_AS(CommError, n <= INT_MAX, "{} blocks exceed MPI's int count limit", n);
    return static_cast<int>(n);
  }
};

MPI_Datatype mpi_type(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return MPI_FLOAT;
    case c10::ScalarType::Double: return MPI_DOUBLE;
    case c10::ScalarType::Long: return MPI_INT64_T;
    case c10::ScalarType::Int: return MPI_INT32_T;
    case c10::ScalarType::Byte: return MPI_UINT8_T;
    case c10::ScalarType::Char: return MPI_INT8_T;
    default: return MPI_DATATYPE_NULL;
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
    default: return MPI_SUM;
  }
}

at::Tensor to_host(const at::Tensor& t) { return t.is_cpu() ? t : t.cpu(); }

}  // namespace

void check_mpi(int code, const char* call, const OpInfo* info) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  std::string context = info ? fmt::format(" during {} #{} '{}'", info->op, info->seq, info->boundary) : "";
  throw CommError(fmt::format("{} failed{}: {}", call, context, text), TRUSTEP_ORIGIN);
}

MpiCommunicator::MpiCommunicator(const CommOptions& options)
    : Communicator(mpi_world_rank(), mpi_world_size(), options), comm_(dup_world()) {
  start_watchdog();
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::abort_job(int exit_code, const std::string& why) {
  log::error("rank {}: aborting the job (exit code {}): {}", rank(), exit_code, why);
  abort_world(exit_code);
}

void MpiCommunicator::do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                                      const std::vector<int64_t>& recv_counts, at::Tensor& recv, const OpInfo& info) {
  const at::Tensor host = to_host(send);
  at::Tensor host_recv = recv.is_cpu() ? recv : at::empty(recv.sizes(), host.options());
  const int64_t row_bytes = host.size(1) * static_cast<int64_t>(host.element_size());
  const int64_t recv_rows = host_recv.size(0);
  if (row_bytes > 0) {
    const Unit unit(std::max(host.size(0), recv_rows) * row_bytes, row_bytes);
    std::vector<int> sc(size()), sd(size()), rc(size()), rd(size());
    int64_t soff = 0, roff = 0;
    for (int p = 0; p < size(); ++p) {
      sc[p] = unit.count(send_counts[p] * row_bytes);
      sd[p] = unit.count(soff * row_bytes);
      rc[p] = unit.count(recv_counts[p] * row_bytes);
      rd[p] = unit.count(roff * row_bytes);
      soff += send_counts[p];
      roff += recv_counts[p];
    }
    check_mpi(MPI_Alltoallv(host.data_ptr(), sc.data(), sd.data(), unit.type, host_recv.data_ptr(), rc.data(),
                            rd.data(), unit.type, comm_),
              "MPI_Alltoallv", &info);
  }
  if (!recv.is_cpu()) recv.copy_(host_recv);
}

void MpiCommunicator::do_all_reduce(at::Tensor& t, ReduceOp op, const OpInfo& info) {
  at::Tensor host = to_host(t);
  const bool widen = host.scalar_type() == c10::ScalarType::Half || host.scalar_type() == c10::ScalarType::BFloat16;
  at::Tensor work = widen ? host.to(c10::ScalarType::Float) : host;
  const MPI_Datatype type = mpi_type(work.scalar_type());
  if (type == MPI_DATATYPE_NULL)  // dtypes agree on all ranks (header), so all raise this together
    throw CommError(fmt::format("all_reduce '{}': dtype {} cannot be reduced [raised on every rank]", info.boundary,
                                dtype_name(t.scalar_type())),
                    TRUSTEP_ORIGIN, /*collective=*/true);
  auto* base = static_cast<char*>(work.data_ptr());
  for (int64_t done = 0; done < work.numel();) {
    const int64_t n = std::min<int64_t>(work.numel() - done, INT_MAX);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, base + done * work.element_size(), static_cast<int>(n), type, mpi_op(op),
                            comm_),
              "MPI_Allreduce", &info);
    done += n;
  }
  if (widen || !t.is_cpu()) t.copy_(work);
}

at::Tensor MpiCommunicator::do_all_gather(const at::Tensor& t, const OpInfo& info) {
  const at::Tensor host = to_host(t);
  std::vector<int64_t> shape{size()};
  shape.insert(shape.end(), host.sizes().begin(), host.sizes().end());
  at::Tensor out = at::empty(shape, host.options());
  const int64_t nbytes = host.numel() * static_cast<int64_t>(host.element_size());
  if (nbytes > 0) {
    const Unit unit(nbytes, nbytes);
    check_mpi(MPI_Allgather(host.data_ptr(), unit.count(nbytes), unit.type, out.data_ptr(), unit.count(nbytes),
                            unit.type, comm_),
              "MPI_Allgather", &info);
  }
  return t.is_cpu() ? out : out.to(t.device());
}

void MpiCommunicator::do_broadcast(at::Tensor& t, int root, const OpInfo& info) {
  at::Tensor host = to_host(t);
  const int64_t nbytes = host.numel() * static_cast<int64_t>(host.element_size());
  if (nbytes > 0) {
    const Unit unit(nbytes, nbytes);
    check_mpi(MPI_Bcast(host.data_ptr(), unit.count(nbytes), unit.type, root, comm_), "MPI_Bcast", &info);
  }
  if (!t.is_cpu()) t.copy_(host);
}

void MpiCommunicator::do_barrier(const OpInfo& info) { check_mpi(MPI_Barrier(comm_), "MPI_Barrier", &info); }

void MpiCommunicator::do_all_gather_i64(const int64_t* in, int64_t n, int64_t* out) {
  check_mpi(MPI_Allgather(in, static_cast<int>(n), MPI_INT64_T, out, static_cast<int>(n), MPI_INT64_T, comm_),
            "MPI_Allgather (header)");
}

}  // namespace trustep::comm
