// nodump: makes itself non-dumpable (prctl PR_SET_DUMPABLE 0), so the kernel skips its core dump, then dereferences NULL in crash_here.
// With an argument, it first fills that many MiB: its exit then takes milliseconds.
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }

int main(int argc, char **argv) {
  if (argc > 1) {
    size_t n = (size_t)atoi(argv[1]) << 20;
    char *m = malloc(n);
    if (m)
      memset(m, 1, n);
  }
  prctl(PR_SET_DUMPABLE, 0);
  crash_here(0);
  return 0;
}
