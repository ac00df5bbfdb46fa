# syntax=docker/dockerfile:1
# corecatch's image: the static binary (the agent, and the helper it copies
# onto the host), with gdb and elfutils for backtraces and `corecatch debug`.
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --always --dirty) -t IMAGE --push .
# deploy/deploy_test.go checks that the build stage builds as `make build`.

# The build runs on the builder's own platform and cross-compiles: the binary
# is static (CGO_ENABLED=0) and the committed eBPF objects are little-endian,
# which amd64 and arm64 both are.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN GOARCH=${TARGETARCH} CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/corecatch/corecatch/pkg/cli.Version=${VERSION}" -o /out/corecatch ./cmd/corecatch

# gdb and elfutils need a distribution; Debian's slim image is the smallest
# that has both.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gdb elfutils zstd ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/corecatch /usr/local/bin/corecatch
ENTRYPOINT ["/usr/local/bin/corecatch"]
CMD ["agent"]
