// gocrash: a Go program that dies as GOTRACEBACK=crash makes it: a nil
// dereference in main.parseHeader, or with "panic" an unrecovered panic in
// main.main. The runtime re-raises SIGABRT from its signal handler.
package main

import "os"

type header struct{ n int }

//go:noinline
func parseHeader(h *header) int { return h.n }

func main() {
	var h *header
	if len(os.Args) > 1 && os.Args[1] == "panic" {
		panic("bad header")
	}
	os.Exit(parseHeader(h))
}
