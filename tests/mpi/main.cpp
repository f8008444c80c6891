// GoogleTest under mpirun: every rank runs every test; rank 0 prints the usual report, other
// ranks print only their failures; the job fails when any rank failed.
#include "comm/mpi_runtime.h"
#include "core/log.h"

#include <gtest/gtest.h>

#include <cstdio>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

namespace {

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] FAILURE %s:%d\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  trustep::comm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = trustep::comm::mpi_world_rank();
  trustep::log::set_rank(rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && failed) std::fprintf(stderr, "at least one rank failed a test\n");
#if defined(__SANITIZE_ADDRESS__)
  // LeakSanitizer, now rather than at exit: after MPI_Finalize Open MPI has unloaded its
  // components, and what they still held shows up as thousands of leaks from unknown modules.
  // Everything the tests allocated is back by now; what Open MPI keeps for the process is
  // matched by tests/lsan.supp. A leak found here ends the process with LeakSanitizer's exit
  // code (the at-exit check is then skipped).
  __lsan_do_leak_check();
#endif
  return failed;
}
