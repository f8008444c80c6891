// NCCL backend (built only with CUDA): CUDA tensors on the torch current stream; CPU tensors
// and the control plane (headers, agreement checks) go through the MPI base.
#pragma once

#include "comm/communicator.h"

#include <memory>

namespace trustep::comm {

// Bootstraps NCCL by broadcasting the unique id over MPI; the GPU is the node-local rank
// modulo the visible devices. Throws CommError when no GPU is visible.
std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& options);
// True when a CUDA device is visible to this process.
bool cuda_device_visible();

}  // namespace trustep::comm
