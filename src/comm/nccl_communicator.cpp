#include "comm/nccl_communicator.h"

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <nccl.h>


namespace trustep::comm {
namespace {

void check_nccl(ncclResult_t code, const char* call, ncclComm_t comm, const OpInfo* info = nullptr) {
  if (code == ncclSuccess) return;
  std::string context = info ? fmt::format(" during {} #{} '{}'", info->op, info->seq, info->boundary) : "";
  const char* last = comm ? ncclGetLastError(comm) : "";
  throw CommError(fmt::format("{} failed{}: {} {}", call, context, ncclGetErrorString(code), last ? last : ""),
                  TRUSTEP_ORIGIN);
}

void check_cuda(cudaError_t code, const char* call) {
  if (code != cudaSuccess) throw CommError(fmt::format("{} failed: {}", call, cudaGetErrorString(code)), TRUSTEP_ORIGIN);
}

bool nccl_type(c10::ScalarType t, ncclDataType_t* out) {
  switch (t) {
    case c10::ScalarType::Float: *out = ncclFloat32; return true;
    case c10::ScalarType::Half: *out = ncclFloat16; return true;
    case c10::ScalarType::BFloat16: *out = ncclBfloat16; return true;
    case c10::ScalarType::Double: *out = ncclFloat64; return true;
    case c10::ScalarType::Long: *out = ncclInt64; return true;
    case c10::ScalarType::Int: *out = ncclInt32; return true;
    case c10::ScalarType::Byte: *out = ncclUint8; return true;
    case c10::ScalarType::Char: *out = ncclInt8; return true;
    default: return false;
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    default: return ncclSum;
  }
}

// MPI base for CPU tensors and the control plane; NCCL for CUDA tensors.
class NcclCommunicator : public MpiCommunicator {
 public:
  explicit NcclCommunicator(const CommOptions& options) : MpiCommunicator(options) {
    const int devices = static_cast<int>(c10::cuda::device_count());
    // Decide together: a rank without a GPU must not leave the others in the id broadcast.
    int fewest = devices;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &fewest, 1, MPI_INT, MPI_MIN, comm()), "MPI_Allreduce (GPU check)");
    if (fewest == 0)
      throw CommError(fmt::format("backend nccl: a rank sees no CUDA device (this rank sees {}) [raised on every "
                                  "rank]",
                                  devices),
                      TRUSTEP_ORIGIN, /*collective=*/true);
    device_ = mpi_local_rank() % devices;
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_));
    ncclUniqueId id;
    if (rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
    check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm()), "MPI_Bcast (NCCL unique id)");
    auto scope = watchdog().watch(OpInfo{"ncclCommInitRank", "", 0, size(), {}});
    check_nccl(ncclCommInitRank(&nccl_, size(), id, rank()), "ncclCommInitRank", nullptr);
    log::debug("nccl communicator ready on cuda:{} (node-local rank {})", device_, mpi_local_rank());
  }

  ~NcclCommunicator() override {
    if (nccl_) ncclCommDestroy(nccl_);
  }

  const char* name() const override { return "nccl"; }

  void synchronize() override { check_cuda(cudaStreamSynchronize(at::cuda::getCurrentCUDAStream()), "cudaStreamSynchronize"); }

  [[noreturn]] void abort_job(int exit_code, const std::string& why) override {
    if (nccl_) ncclCommAbort(nccl_);  // releases peers blocked inside NCCL kernels
    nccl_ = nullptr;
    MpiCommunicator::abort_job(exit_code, why);
  }

 protected:
  void do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                       const std::vector<int64_t>& recv_counts, at::Tensor& recv, const OpInfo& info) override {
    if (!send.is_cuda()) return MpiCommunicator::do_all_to_all_v(send, send_counts, recv_counts, recv, info);
    c10::cuda::CUDAGuard guard(send.device());
    const int64_t row_bytes = send.size(1) * static_cast<int64_t>(send.element_size());
    auto stream = at::cuda::getCurrentCUDAStream();
    const auto* sbuf = static_cast<const char*>(send.data_ptr());  // [N, W] rows grouped by destination
    auto* rbuf = static_cast<char*>(recv.data_ptr());              // [R, W] rows grouped by source
    check_nccl(ncclGroupStart(), "ncclGroupStart", nccl_, &info);
    int64_t soff = 0, roff = 0;
    for (int p = 0; p < size(); ++p) {
      if (send_counts[p] > 0 && row_bytes > 0)
        check_nccl(ncclSend(sbuf + soff * row_bytes, send_counts[p] * row_bytes, ncclUint8, p, nccl_, stream),
                   "ncclSend", nccl_, &info);
      if (recv_counts[p] > 0 && row_bytes > 0)
        check_nccl(ncclRecv(rbuf + roff * row_bytes, recv_counts[p] * row_bytes, ncclUint8, p, nccl_, stream),
                   "ncclRecv", nccl_, &info);
      soff += send_counts[p];
      roff += recv_counts[p];
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd", nccl_, &info);
    watch_stream(info, stream);
  }

  void do_all_reduce(at::Tensor& t, ReduceOp op, const OpInfo& info) override {
    if (!t.is_cuda()) return MpiCommunicator::do_all_reduce(t, op, info);
    c10::cuda::CUDAGuard guard(t.device());
    auto stream = at::cuda::getCurrentCUDAStream();
    check_nccl(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type_of(t, info), nccl_op(op), nccl_, stream),
               "ncclAllReduce", nccl_, &info);
    watch_stream(info, stream);
  }

  at::Tensor do_all_gather(const at::Tensor& t, const OpInfo& info) override {
    if (!t.is_cuda()) return MpiCommunicator::do_all_gather(t, info);
    c10::cuda::CUDAGuard guard(t.device());
    std::vector<int64_t> shape{size()};
    shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
    at::Tensor out = at::empty(shape, t.options());
    auto stream = at::cuda::getCurrentCUDAStream();
    const size_t bytes = t.numel() * t.element_size();
    check_nccl(ncclAllGather(t.data_ptr(), out.data_ptr(), bytes, ncclUint8, nccl_, stream), "ncclAllGather", nccl_,
               &info);
    watch_stream(info, stream);
    return out;
  }

  void do_broadcast(at::Tensor& t, int root, const OpInfo& info) override {
    if (!t.is_cuda()) return MpiCommunicator::do_broadcast(t, root, info);
    c10::cuda::CUDAGuard guard(t.device());
    auto stream = at::cuda::getCurrentCUDAStream();
    const size_t bytes = t.numel() * t.element_size();
    check_nccl(ncclBroadcast(t.data_ptr(), t.data_ptr(), bytes, ncclUint8, root, nccl_, stream), "ncclBroadcast",
               nccl_, &info);
    watch_stream(info, stream);
  }

 private:
  ncclDataType_t type_of(const at::Tensor& t, const OpInfo& info) const {
    ncclDataType_t type;
    if (!nccl_type(t.scalar_type(), &type))
      throw CommError(fmt::format("{} '{}': dtype {} cannot be reduced by NCCL [raised on every rank]", info.op,
                                  info.boundary, dtype_name(t.scalar_type())),
                      TRUSTEP_ORIGIN, /*collective=*/true);
    return type;
  }

  // NCCL returns once the work is queued; the watchdog follows it to completion on the stream.
  void watch_stream(const OpInfo& info, cudaStream_t stream) {
    cudaEvent_t event;
    check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    check_cuda(cudaEventRecord(event, stream), "cudaEventRecord");
    auto owned = std::shared_ptr<CUevent_st>(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
    watchdog().watch_async(info, [owned] { return cudaEventQuery(owned.get()) != cudaErrorNotReady; });
  }

  int device_ = 0;
  ncclComm_t nccl_ = nullptr;
};

}  // namespace

bool cuda_device_visible() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& options) {
  return std::make_unique<NcclCommunicator>(options);
}

}  // namespace trustep::comm
