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

static void note_open(int fd, const char* path) {
  if (fd >= 0 && fd < kMaxFd) g_watched[fd] = (unsigned char)watched_path(path);
}

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define FORWARD_OPEN(name, ...)                                   \
  static int (*real)(__VA_ARGS__);                                \
  if (!real) real = (int (*)(__VA_ARGS__))dlsym(RTLD_NEXT, name);

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  FORWARD_OPEN("open", const char*, int, ...)
  const int fd = real(path, flags, mode);
  note_open(fd, path);
  return fd;
}

int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  FORWARD_OPEN("open64", const char*, int, ...)
  const int fd = real(path, flags, mode);
  note_open(fd, path);
  return fd;
}

int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  FORWARD_OPEN("openat", int, const char*, int, ...)
  const int fd = real(dir, path, flags, mode);
  note_open(fd, path);
  return fd;
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
