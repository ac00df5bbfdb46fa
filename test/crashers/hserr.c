// hserr: writes a JVM-style hs_err_pid<pid>.log (or, with "symlink", makes that name a symlink to argv[2]) in its working directory, then aborts in write_and_die.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) void write_and_die(const char *mode, const char *target) {
  char name[64];
  snprintf(name, sizeof name, "hs_err_pid%d.log", getpid());
  if (strcmp(mode, "symlink") == 0) {
    if (symlink(target, name) != 0) perror("symlink");
  } else {
    FILE *f = fopen(name, "w");
    fprintf(f, "# A fatal error has been detected by the Java Runtime Environment:\n#  SIGSEGV (0xb) marker-%d\n", getpid());
    fprintf(f, "#\n# Problematic frame:\n# C  [libfoo.so+0x1c40]  parse_header+0x13\n#\n");
    fclose(f);
  }
  abort();
}

int main(int argc, char **argv) {
  write_and_die(argc > 1 ? argv[1] : "file", argc > 2 ? argv[2] : "");
  return 0;
}
