// burst: forks N (argv[1]) children that each dereference NULL at once, prints each child's pid, and waits for them all; RLIMIT_CORE 0 so the kernel writes no core files.
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1000;
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  int go[2];
  if (pipe(go) != 0) return 1;
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      char c;
      close(go[1]);
      read(go[0], &c, 1); /* all start together */
      *(volatile int *)0 = 1;
      _exit(0);
    }
    printf("%d\n", pid);
  }
  fflush(stdout);
  close(go[0]);
  close(go[1]); /* EOF releases every child at once */
  while (wait(0) > 0) {
  }
  return 0;
}
