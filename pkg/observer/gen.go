package observer

// The BPF objects are committed; `make generate` rebuilds them with Debian's
// clang-14, and CI checks that they match. Paths are relative so that the
// objects do not depend on where the repository is checked out.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror" -target bpfel -type event -go-package observer btf ../../bpf/observer.bpf.c -- -I../../bpf/include -I../../bpf
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror" -target bpfel -go-package observer tracepoint ../../bpf/observer_tp.bpf.c -- -I../../bpf/include -I../../bpf
