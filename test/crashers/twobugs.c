// twobugs: one program, two different SIGSEGV bugs: "header" faults in
// parse_header, "record" in write_record. Deduplication must keep a core of
// each.
#include <stdio.h>
#include <string.h>

__attribute__((noinline)) int parse_header(const char *p) { return *(volatile const char *)p; }

__attribute__((noinline)) void write_record(char *dst) { *(volatile char *)dst = 1; }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: twobugs header|record\n");
    return 2;
  }
  if (!strcmp(argv[1], "header"))
    return parse_header((const char *)16);
  write_record((char *)32);
  return 0;
}
