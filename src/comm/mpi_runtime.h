// Process-wide MPI lifetime. MPI is initialised once with MPI_THREAD_MULTIPLE (the watchdog
// thread may call MPI_Abort while the main thread is inside a collective).
#pragma once

#include <mpi.h>

namespace trustep::comm {

class MpiSession {
 public:
  // Initialises MPI unless already initialised (then it neither initialises nor finalises).
  MpiSession(int* argc, char*** argv);
  ~MpiSession();  // MPI_Finalize when this session initialised MPI
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool thread_multiple() const { return provided_ >= MPI_THREAD_MULTIPLE; }

 private:
  bool owns_ = false;
  int provided_ = MPI_THREAD_SINGLE;
};

bool mpi_active();        // initialised and not finalised
int mpi_world_rank();     // 0 when MPI is not active
int mpi_world_size();     // 1 when MPI is not active
int mpi_local_rank();     // rank among the processes on this node (for GPU selection)
// MPI_Abort(MPI_COMM_WORLD) when MPI is active, else _Exit. Never returns.
[[noreturn]] void abort_world(int exit_code);

}  // namespace trustep::comm
