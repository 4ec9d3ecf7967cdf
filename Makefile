# Thin wrappers over cargo and the harness. `make qemu-test` and `make test` set up
# everything on a fresh machine (see scripts/setup.sh).

CARGO        ?= cargo
GUEST_TARGET := x86_64-unknown-none
BACKEND      := $(CURDIR)/target/release/vhost-user-flakyhba
IMAGE        := $(CURDIR)/target/$(GUEST_TARGET)/release/flakyhba-guest
HARNESS      := $(CURDIR)/target/release/flakyhba-harness
LINUX_GUEST  := $(CURDIR)/target/linux-guest
HARNESS_ARGS ?=
FUZZ_SECONDS ?= 60

# The harness and its tests find the binaries and the Linux guest through these.
export FLAKYHBA_BACKEND     := $(BACKEND)
export FLAKYHBA_IMAGE       := $(IMAGE)
export FLAKYHBA_LINUX_GUEST := $(LINUX_GUEST)

.PHONY: all setup build linux-guest test qemu-test linux-test bench bench-linux lint fuzz explore clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p flakyhba-backend -p flakyhba-harness
	$(CARGO) build --release -p flakyhba-guest --target $(GUEST_TARGET)

# A Debian kernel and a busybox initramfs with sg3_utils, fio and e2fsprogs, from Debian's
# packages (apt-get download; nothing is installed on the host). Cached in $(LINUX_GUEST).
linux-guest: setup
	bash linux-guest/build.sh $(LINUX_GUEST)

# All tests: unit tests of every host crate, the guest library's host tests against the
# simulated HBA, and the harness's QEMU scenarios (the guest image and a stock Linux guest),
# which need the release binaries.
test: build linux-guest
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory qemu-test

# Every scenario of harness/scenarios and its negative control; results in target/qemu-test.
qemu-test: build
	$(HARNESS) matrix $(HARNESS_ARGS)

# Backend speed without a guest: the harness's vhost-user frontend drives the backend
# directly. PEER='<command taking --socket-path S IMAGE>' adds a peer backend (never
# downloaded; restarted for every run). Writes target/bench.json.
bench: setup
	$(CARGO) build --release -p flakyhba-backend -p flakyhba-harness
	$(HARNESS) bench --suite --backend $(BACKEND) $${PEER:+--peer "$$PEER"} --json $(CURDIR)/target/bench.json $(BENCH_ARGS)

# Slow (some 7 minutes): the stock Linux guest runs the same fio jobs (4k randread and
# randwrite, iodepth 32, O_DIRECT, 10 s each) against our backend and against QEMU's built-in
# virtio-scsi (scsi-hd, cache=none, aio=native) on the same image, 3 boots each, under TCG.
# Not part of `make test`. Writes target/bench-linux.json.
bench-linux: build linux-guest
	$(HARNESS) bench-linux --json $(CURDIR)/target/bench-linux.json $(BENCH_LINUX_ARGS)

# The stock Linux guest alone (TCG; about half a minute per run).
linux-test: build linux-guest
	$(HARNESS) linux --queues 1 $(HARNESS_ARGS)
	$(HARNESS) linux --queues 4 $(HARNESS_ARGS)
	$(HARNESS) linux --queues 1 --held-read $(HARNESS_ARGS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p guest-miniport -p flakyhba-guest --target $(GUEST_TARGET) -- -D warnings

# Random fault plans and guest arguments against the miniport, judged by the generic
# oracle (EXPLORE_RUNS plans of seed EXPLORE_SEED, two guests at a time); each finding is
# shrunk to a scenario file in target/explore/found/. Exits 1 when something was found.
# EXPLORE_ARGS passes more flags: `--guest bug=NAME` plants a bug, `--shard K/N`,
# `--jobs N`, `--allow-corruption` (flakyhba-harness explore --help). Not part of `make test`.
EXPLORE_RUNS ?= 500
EXPLORE_SEED ?= 1
explore: build
	$(HARNESS) explore --seed $(EXPLORE_SEED) --runs $(EXPLORE_RUNS) --out $(CURDIR)/target/explore $(EXPLORE_ARGS)

# The cargo-fuzz targets in fuzz/ (request chains through the queues, CDB decoding, fault
# plans), FUZZ_SECONDS each; installs cargo-fuzz (and nightly) if missing. Fails on a crash,
# a hang or a broken invariant, naming the input. Not part of `make test`.
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
