// segv: the simplest crasher, a NULL store in a named function.
#include <stdio.h>

__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }

int main(void) {
  fprintf(stderr, "segv ready\n");
  crash_here(0);
  return 0;
}
