#include "comm/communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/self_communicator.h"
#include "core/error.h"

#ifdef TRUSTEP_HAVE_CUDA
#include "comm/nccl_communicator.h"
#endif

namespace trustep::comm {

void require_backend_built(Backend backend) {
#ifndef TRUSTEP_HAVE_CUDA
  if (backend == Backend::kNccl)
    throw OptionError("invalid value 'nccl' for option '--backend': this build has no CUDA/NCCL "
                      "(see the CMake summary); use mpi",
                      TRUSTEP_ORIGIN);
#else
  (void)backend;
#endif
}

std::unique_ptr<Communicator> make_communicator(const CommOptions& options) {
  require_backend_built(options.backend);
  switch (options.backend) {
    case Backend::kSelf:
      return std::make_unique<SelfCommunicator>(options);
    case Backend::kMpi:
      return std::make_unique<MpiCommunicator>(options);
    case Backend::kNccl:
#ifdef TRUSTEP_HAVE_CUDA
      return make_nccl_communicator(options);
#else
      break;  // not reached: require_backend_built threw
#endif
    case Backend::kAuto:
#ifdef TRUSTEP_HAVE_CUDA
    {
      // Every rank must pick the same backend: nccl only when all ranks see a GPU.
      int all_visible = cuda_device_visible() ? 1 : 0;
      if (mpi_active())
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, &all_visible, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD),
                  "MPI_Allreduce (backend choice)");
      if (all_visible) return make_nccl_communicator(options);
    }
#endif
      if (mpi_active()) return std::make_unique<MpiCommunicator>(options);
      return std::make_unique<SelfCommunicator>(options);
  }
  throw Error("make_communicator: unknown backend", TRUSTEP_ORIGIN);
}

}  // namespace trustep::comm
