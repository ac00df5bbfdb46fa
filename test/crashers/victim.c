// victim: maps libvictim.so, prints "ready", waits for a stdin line, then dies of SIGSEGV in crash_victim.
#include <stdio.h>

int victim_value(int x);

__attribute__((noinline)) void crash_victim(volatile int *p) { *p = victim_value(1); }

int main(void) {
  char line[16];
  printf("ready %d\n", victim_value(2));
  fflush(stdout);
  if (!fgets(line, sizeof line, stdin))
    return 2;
  crash_victim(0);
  return 0;
}
