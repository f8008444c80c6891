// LD_PRELOAD shim for the disk-full test: files whose path contains $TRUSTEP_ENOSPC_PATH take
// $TRUSTEP_ENOSPC_BYTES bytes (default 0) in all, then write(2) fails with ENOSPC, as on a
// full disk. Everything else is untouched. Test-only; never linked into trustep.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum { kMaxFd = 4096 };
static unsigned char g_watched[kMaxFd];  // fd -> opened on a watched path
static long long g_budget = -1;          // bytes left to watched files; -1: not read yet

static int watched_path(const char* path) {
  const char* marker = getenv("TRUSTEP_ENOSPC_PATH");
  return marker && *marker && path && strstr(path, marker) != NULL;
}

// The mode argument exists only when the flags create a file.
#define MODE_ARG(flags)                                                                 \
  mode_t mode = 0;                                                                      \
  if (((flags) & O_CREAT) || ((flags) & __O_TMPFILE) == __O_TMPFILE) {                  \
    va_list ap;                                                                         \
    va_start(ap, flags);                                                                \
    mode = (mode_t)va_arg(ap, int);                                                     \
    va_end(ap);                                                                         \
  }

typedef int (*openat_fn)(int, const char*, int, ...);

// Every open variant goes through the real openat/openat64 (open(p) is openat(AT_FDCWD, p)).
static int open_and_note(const char* real_name, int dir, const char* path, int flags, mode_t mode) {
  openat_fn real = (openat_fn)dlsym(RTLD_NEXT, real_name);
  const int fd = real(dir, path, flags, mode);
  if (fd >= 0 && fd < kMaxFd) g_watched[fd] = (unsigned char)watched_path(path);
  return fd;
}

int open(const char* path, int flags, ...) {
  MODE_ARG(flags)
  return open_and_note("openat", AT_FDCWD, path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  MODE_ARG(flags)
  return open_and_note("openat64", AT_FDCWD, path, flags, mode);
}
int openat(int dir, const char* path, int flags, ...) {
  MODE_ARG(flags)
  return open_and_note("openat", dir, path, flags, mode);
}

ssize_t write(int fd, const void* buf, size_t n) {
  static ssize_t (*real)(int, const void*, size_t);
  if (!real) real = (ssize_t(*)(int, const void*, size_t))dlsym(RTLD_NEXT, "write");
  if (fd >= 0 && fd < kMaxFd && g_watched[fd]) {
    if (g_budget < 0) {
      const char* bytes = getenv("TRUSTEP_ENOSPC_BYTES");
      g_budget = bytes ? atoll(bytes) : 0;
    }
    if (g_budget <= 0) {
      errno = ENOSPC;
      return -1;
    }
    if ((long long)n > g_budget) n = (size_t)g_budget;  // a short write, then ENOSPC
    g_budget -= (long long)n;
  }
  return real(fd, buf, n);
}
