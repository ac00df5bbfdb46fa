// lim_mem: touches MIB MiB (fill: compressible, rand: incompressible); with "wait" says so on stdout and waits for stdin's EOF; then says "lim_mem ready" with its CLOCK_MONOTONIC time in ns (the moment it faults, for the bench) and segfaults.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: lim_mem MIB fill|rand [wait]\n");
    return 2;
  }
  size_t size = (size_t)strtoul(argv[1], 0, 10) << 20;
  int rnd = strcmp(argv[2], "rand") == 0;
  if (size > 0) {
    uint64_t *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      perror("mmap");
      return 2;
    }
    madvise(mem, size, MADV_HUGEPAGE); // fewer page faults: faster to fill
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    for (size_t i = 0; i < size / 8; i++) {
      if (rnd) { // xorshift64: fast and incompressible
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        mem[i] = x;
      } else {
        mem[i] = 0x0101010101010101ull * (1 + (i >> 9) % 255);
      }
    }
  }
  if (argc > 3 && strcmp(argv[3], "wait") == 0) {
    char c = 'r';
    write(1, &c, 1);
    while (read(0, &c, 1) > 0) {
    }
  }
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  fprintf(stderr, "lim_mem ready %lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
  crash_here(0);
  return 0;
}
