// gdbscript is a hostile container's program for `corecatch debug`: it maps
// the file named by argv[1] (a Python script the test put beside it as
// "<exe>-gdb.py", so that the bundle's sysroot holds it beside the
// executable, where gdb's auto-load looks) and carries an inline script in
// a .debug_gdb_scripts section; both would create a marker file named by
// $CC_MARKER if gdb ran them. Then it crashes.
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

asm(".pushsection \".debug_gdb_scripts\", \"MS\",@progbits,1\n"
    ".byte 4\n"
    ".ascii \"gdb.inlined-script\\n\"\n"
    ".ascii \"import os\\n\"\n"
    ".ascii \"open(os.environ['CC_MARKER'] + '.section', 'w').close()\\n\"\n"
    ".byte 0\n"
    ".popsection\n");

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: gdbscript SCRIPT\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0 || mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED) {
		perror(argv[1]);
		return 2;
	}
	*(volatile int *)0 = 1;
	return 0;
}
