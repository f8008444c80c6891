#include "comm/mpi_runtime.h"

#include "core/error.h"
#include "core/log.h"

#include <cstdlib>

namespace trustep::comm {

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (initialised) {
    MPI_Query_thread(&provided_);
    return;
  }
  if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided_) != MPI_SUCCESS)
    throw CommError("MPI_Init_thread failed", TRUSTEP_ORIGIN);
  // Errors come back as codes we turn into exceptions, instead of aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  owns_ = true;
  if (provided_ < MPI_THREAD_MULTIPLE)
    log::warn("MPI provides thread level {} < MPI_THREAD_MULTIPLE: a watchdog abort from its own thread may "
              "not stop the job cleanly",
              provided_);
}

MpiSession::~MpiSession() {
  if (owns_ && mpi_active()) MPI_Finalize();
}

bool mpi_active() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  return initialised && !finalised;
}

int mpi_world_rank() {
  int rank = 0;
  if (mpi_active()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int mpi_world_size() {
  int size = 1;
  if (mpi_active()) MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

int mpi_local_rank() {
  if (!mpi_active()) return 0;
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int rank = 0;
  MPI_Comm_rank(local, &rank);
  MPI_Comm_free(&local);
  return rank;
}

void abort_world(int exit_code) {
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace trustep::comm
