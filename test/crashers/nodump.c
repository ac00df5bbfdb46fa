// nodump: makes itself non-dumpable (prctl PR_SET_DUMPABLE 0), so the kernel skips its core dump, then dereferences NULL in crash_here.
#include <sys/prctl.h>

__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }

int main(void) {
  prctl(PR_SET_DUMPABLE, 0);
  crash_here(0);
  return 0;
}
