// signals: dies of SIGSEGV, SIGABRT, SIGBUS or SIGFPE in a named function, optionally in a non-main thread, after a stdin line, under a chosen comm; "handled" survives its own SIGSEGV.
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

// Usage: signals segv|abrt|bus|fpe|handled [--threads] [--wait] [--name COMM] [--hole MIB]
//   bus        prints the mapping's range ("START-END" in hex) before it faults
//   handled    faults in crash_segv under its own SIGSEGV handler, which
//              siglongjmps back; prints "survived" and exits 0
//   --threads  crash in a new thread while two others block in read(2)
//   --wait     print "ready" and wait for a line on stdin before crashing
//   --name     set the task name (comm) with prctl(PR_SET_NAME)
//   --hole     map MIB MiB of anonymous memory and touch only its first page

__attribute__((noinline)) void crash_segv(void) { *(volatile int *)0 = 42; }

__attribute__((noinline)) void crash_abrt(void) { abort(); }

__attribute__((noinline)) void crash_bus(void) {
  long page = sysconf(_SC_PAGESIZE);
  FILE *f = tmpfile();
  if (!f || ftruncate(fileno(f), page) != 0) {
    perror("tmpfile");
    exit(2);
  }
  volatile char *p = mmap(0, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(f), 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  printf("%lx-%lx\n", (unsigned long)p, (unsigned long)p + 2 * page);
  fflush(stdout);
  p[page] = 1; // the second page lies wholly past the end of the file
}

__attribute__((noinline)) int crash_fpe(int a) {
  volatile int zero = 0;
  return a / zero;
}

static sigjmp_buf recover;

static void on_segv(int sig) {
  (void)sig;
  siglongjmp(recover, 1);
}

static void survive_segv(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_segv;
  sigaction(SIGSEGV, &sa, 0);
  if (!sigsetjmp(recover, 1))
    crash_segv();
  printf("survived\n");
  exit(0);
}

static const char *mode;
static int blocker[2];

static void crash(void) {
  if (!strcmp(mode, "segv"))
    crash_segv();
  else if (!strcmp(mode, "abrt"))
    crash_abrt();
  else if (!strcmp(mode, "bus"))
    crash_bus();
  else if (!strcmp(mode, "fpe"))
    printf("%d\n", crash_fpe(7));
  else if (!strcmp(mode, "handled"))
    survive_segv();
  fprintf(stderr, "signals: unknown mode %s or no crash\n", mode);
  exit(2);
}

static void *blocked(void *arg) {
  char c;
  (void)arg;
  read(blocker[0], &c, 1); // nobody writes: blocks forever
  return 0;
}

static void *crasher(void *arg) {
  (void)arg;
  crash();
  return 0;
}

int main(int argc, char **argv) {
  int threads = 0, wait = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: signals segv|abrt|bus|fpe|handled [--threads] [--wait] [--name COMM] [--hole MIB]\n");
    return 2;
  }
  mode = argv[1];
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--threads"))
      threads = 1;
    else if (!strcmp(argv[i], "--wait"))
      wait = 1;
    else if (!strcmp(argv[i], "--name") && i + 1 < argc)
      prctl(PR_SET_NAME, argv[++i]);
    else if (!strcmp(argv[i], "--hole") && i + 1 < argc) {
      size_t len = (size_t)atol(argv[++i]) << 20;
      char *hole = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (hole == MAP_FAILED) {
        perror("mmap hole");
        return 2;
      }
      hole[0] = 1; // without one touched page the kernel leaves the mapping out of the core
    } else {
      fprintf(stderr, "signals: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  // A real call into libm, so that the executable needs libm.so.
  volatile double x = argc;
  if (cos(x) > 2)
    return 3;
  if (wait) {
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
      return 2;
  }
  if (!threads)
    crash();
  pthread_t t[3];
  if (pipe(blocker) != 0)
    return 2;
  pthread_create(&t[0], 0, blocked, 0);
  pthread_create(&t[1], 0, blocked, 0);
  pthread_create(&t[2], 0, crasher, 0);
  pthread_join(t[2], 0);
  return 2;
}
