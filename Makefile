# corecatch. Every target that needs tools installs them itself, idempotently.
# sudo resets PATH; find the Go toolchain where the machine installs it.
GO        ?= $(shell command -v go || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/corecatch/corecatch/pkg/cli.Version=$(VERSION)
BIN       := bin/corecatch
# Debian packages the tests and benchmarks use: a C compiler for the crasher
# programs, readelf (binutils) for build-id checks, gdb (and its gcore) to
# open bundles, the zstd CLI as the reference decoder and baseline;
# containerd, runc and busybox-static run a real container (no image needed);
# prometheus scrapes a real agent and gives promtool for the rule tests.
TEST_DEBS := gcc libc6-dev binutils gdb zstd containerd runc busybox-static prometheus
# What `make generate` needs to rebuild the committed BPF objects exactly.
GEN_DEBS  := clang-14 llvm-14 libbpf-dev
# A real S3 service for the S3 store's tests and the upload bench: versitygw
# with its POSIX backend, built from source (the module proxy serves it).
VERSITYGW := github.com/versity/versitygw/cmd/versitygw@v1.8.0
VGW_BIN   := /usr/local/bin/versitygw

.PHONY: all build test bench generate check-generated run lint deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/corecatch

# deps installs what the tests need, only what is missing.
deps:
	@missing=""; for p in $(TEST_DEBS) $(GEN_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@[ -x $(VGW_BIN) ] || { echo "building versitygw into $(dir $(VGW_BIN))"; GOBIN=$(dir $(VGW_BIN)) $(GO) install $(VERSITYGW); }

# test runs every test, the privileged end-to-end ones included (as root),
# after checking that the committed BPF objects are what the sources give.
test: deps build lint check-generated
	$(GO) test -count=1 -timeout 30m ./...

bench: deps build
	$(GO) run ./test/bench

generate:
	$(GO) generate ./...

check-generated: deps
	@$(MAKE) --no-print-directory generate
	@if [ -n "$$(git status --porcelain -- pkg/observer bpf)" ]; then \
		git status --short -- pkg/observer bpf; \
		echo "the committed BPF objects differ from what make generate builds: commit its output"; exit 1; fi
# run starts the agent with a local store and the default config: cores land
# in /var/lib/corecatch/bundles; Ctrl-C restores the previous core_pattern.
run: build
	./$(BIN) agent

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
