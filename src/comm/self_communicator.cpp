#include "comm/self_communicator.h"

#include "core/log.h"

#include <algorithm>
#include <cstdlib>

namespace trustep::comm {

SelfCommunicator::SelfCommunicator(const CommOptions& options) : Communicator(0, 1, options) { start_watchdog(); }

void SelfCommunicator::abort_job(int exit_code, const std::string& why) {
  log::error("aborting (exit code {}): {}", exit_code, why);
  std::_Exit(exit_code);
}

// A copy, not an alias: callers own what they receive, as with a real exchange.
void SelfCommunicator::do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>&,
                                       const std::vector<int64_t>&, at::Tensor& recv, const OpInfo&) {
  recv.copy_(send);
}
void SelfCommunicator::do_all_reduce(at::Tensor&, ReduceOp, const OpInfo&) {}
at::Tensor SelfCommunicator::do_all_gather(const at::Tensor& t, const OpInfo&) { return t.unsqueeze(0).clone(); }
void SelfCommunicator::do_broadcast(at::Tensor&, int, const OpInfo&) {}
void SelfCommunicator::do_barrier(const OpInfo&) {}
void SelfCommunicator::do_all_gather_i64(const int64_t* in, int64_t n, int64_t* out) { std::copy(in, in + n, out); }

}  // namespace trustep::comm
