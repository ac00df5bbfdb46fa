// mapper: maps files the way a hostile container could, then dies of SIGSEGV.
//
//   mapper sparse DIR COUNT MIB DATA_KIB
//     creates COUNT files DIR/sparse-N of MIB MiB each, all hole but
//     DATA_KIB KiB of data in the middle, and maps each whole (shared,
//     read-only): a bundle that wrote their holes out would take COUNT*MIB
//     MiB.
//   mapper map FILE [fp|head]
//     maps FILE's second page (private, read-only) without touching it, so
//     neither the process nor the kernel's core dump reads it; with fp, the
//     page is mapped above the stack and the frame pointer points into it
//     when it crashes, so a frame-pointer walk of the live process reads it;
//     with head, its first page is mapped instead, which the kernel's core
//     dump itself reads.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void crash(void *fp) {
  if (fp)
    __asm__ volatile("mov %0, %%rbp\n\tmovl $0, 0" ::"r"(fp) : "memory");
  *(volatile int *)0 = 0;
}

static int sparse(const char *dir, int count, long mib, long kib) {
  static char data[64 << 10];
  memset(data, 0xa5, sizeof data);
  for (int i = 0; i < count; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/sparse-%d", dir, i);
    int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0 || ftruncate(fd, mib << 20) != 0) {
      perror(path);
      return 2;
    }
    for (long off = 0; off < kib << 10; off += sizeof data) {
      data[0] = (char)i; // each file its own bytes
      if (pwrite(fd, data, sizeof data, (mib << 19) + off) != (ssize_t)sizeof data) {
        perror("pwrite");
        return 2;
      }
    }
    fsync(fd);
    if (mmap(NULL, mib << 20, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED) {
      perror("mmap");
      return 2;
    }
    close(fd);
  }
  crash(NULL);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "sparse") == 0)
    return sparse(argv[2], atoi(argv[3]), atol(argv[4]), atol(argv[5]));
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "map") == 0) {
    long page = sysconf(_SC_PAGESIZE);
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) {
      perror(argv[2]);
      return 2;
    }
    char *p = MAP_FAILED;
    if (argc == 4 && strcmp(argv[3], "head") == 0) {
      // The first page, as a library is mapped: the kernel's core dump
      // reads it (to tell ELF files apart, or to dump it).
      p = mmap(NULL, page, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED)
        crash(NULL);
    } else if (argc == 4) {
      // A frame-pointer walk follows only pointers above the stack
      // pointer: map the page just above the stack.
      unsigned long lo, hi, top = 0;
      char line[512];
      FILE *maps = fopen("/proc/self/maps", "r");
      while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "[stack]") && sscanf(line, "%lx-%lx", &lo, &hi) == 2)
          top = hi;
      if (maps)
        fclose(maps);
      for (int k = 1; top && k <= 256 && p == MAP_FAILED; k++)
        p = mmap((void *)(top + k * 16 * page), page, PROT_READ, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, page);
    } else {
      p = mmap(NULL, page, PROT_READ, MAP_PRIVATE, fd, page);
    }
    if (p == MAP_FAILED) {
      perror("mmap");
      return 2;
    }
    crash(argc == 4 ? p + 64 : NULL);
    return 0;
  }
  fprintf(stderr, "usage: mapper sparse DIR COUNT MIB DATA_KIB | mapper map FILE [fp|head]\n");
  return 2;
}
