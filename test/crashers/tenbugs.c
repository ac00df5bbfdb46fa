// tenbugs: touches MIB MiB of random memory, then dies of bug N (0-9): ten different faulting functions, ten signatures.
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define BUG(n) __attribute__((noinline)) void bug##n(volatile int *p) { p[n] = n; }
BUG(0) BUG(1) BUG(2) BUG(3) BUG(4) BUG(5) BUG(6) BUG(7) BUG(8) BUG(9)

int main(int argc, char **argv) {
  if (argc < 3)
    return 2;
  size_t size = (size_t)strtoul(argv[1], 0, 10) << 20;
  uint64_t *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < size / 8; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    mem[i] = x;
  }
  void (*bugs[])(volatile int *) = {bug0, bug1, bug2, bug3, bug4, bug5, bug6, bug7, bug8, bug9};
  bugs[atoi(argv[2]) % 10](0);
  return 0;
}
