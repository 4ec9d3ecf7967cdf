# Thin wrappers over cargo and the harness. `make qemu-test` and `make test` set up
# everything on a fresh machine (see scripts/setup.sh).

CARGO        ?= cargo
GUEST_TARGET := x86_64-unknown-none
BACKEND      := $(CURDIR)/target/release/vhost-user-flakyhba
IMAGE        := $(CURDIR)/target/$(GUEST_TARGET)/release/flakyhba-guest
HARNESS      := $(CURDIR)/target/release/flakyhba-harness
LINUX_GUEST  := $(CURDIR)/target/linux-guest
FIRMWARE_GUEST := $(CURDIR)/target/firmware-guest
HARNESS_ARGS ?=
DRIVERS_ARGS ?=
FUZZ_SECONDS ?= 60
SOAK_MINUTES ?= 10

# The harness and its tests find the binaries and the Linux guest through these.
export FLAKYHBA_BACKEND     := $(BACKEND)
export FLAKYHBA_IMAGE       := $(IMAGE)
export FLAKYHBA_LINUX_GUEST := $(LINUX_GUEST)
export FLAKYHBA_FIRMWARE_GUEST := $(FIRMWARE_GUEST)

.PHONY: all setup build linux-guest firmware-guest test qemu-test linux-test drivers bench bench-linux soak lint fuzz explore clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p flakyhba-backend -p flakyhba-harness
	$(CARGO) build --release -p flakyhba-guest --target $(GUEST_TARGET)

# A Debian kernel (its uncompressed vmlinux, booted through the PVH entry) and a busybox
# initramfs (plain cpio) with sg3_utils, fio and e2fsprogs, from Debian's packages
# (apt-get download; nothing is installed on the host). Cached in $(LINUX_GUEST).
linux-guest: setup
	bash linux-guest/build.sh $(LINUX_GUEST)

# The firmware guests' disk: a SeaBIOS boot sector and an OVMF EFI program, built from
# firmware-guest/ (installs binutils, dosfstools, mtools and ovmf when missing, as root).
firmware-guest: setup
	bash firmware-guest/build.sh $(FIRMWARE_GUEST)

# All tests: unit tests of every host crate, the guest library's host tests against the
# simulated HBA, the harness's QEMU scenarios (the guest image and a stock Linux guest),
# which need the release binaries, and the driver card's subset (every driver's baseline,
# Linux's hot-add, hot-remove and resize, and one fault per driver; target/drivers-subset).
test: build linux-guest firmware-guest
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory qemu-test
	$(HARNESS) drivers --subset --out $(CURDIR)/target/drivers-subset

# The driver card: our miniport, Linux's virtio_scsi, SeaBIOS's and OVMF's virtio-scsi
# drivers against every fault of harness/drivers, under TCG (some 10 minutes). Prints the
# table; target/drivers/report.md and report.json, and each cell's logs, trace and
# timeline in target/drivers/ROW/DRIVER. Exits 1 if a cell differs from its row file.
drivers: build linux-guest firmware-guest
	$(HARNESS) drivers $(DRIVERS_ARGS)

# Every scenario of harness/scenarios and its negative control, on the CPUs each asks
# for (one, two for the race-* scenarios; results in target/qemu-test), then again with the guest on two (target/qemu-test-2cpu: HwInterrupt
# on CPU 1, HwTimer and HwStartIo on CPU 0, unless a scenario routes them otherwise).
qemu-test: build
	$(HARNESS) matrix $(HARNESS_ARGS)
	$(HARNESS) matrix --guest cpus=2 --out $(CURDIR)/target/qemu-test-2cpu $(HARNESS_ARGS)

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

# The stock Linux guest alone (TCG): the steps on 1 and 4 queues, the held read, and
# hot-add, hot-remove and resize.
linux-test: build linux-guest
	$(HARNESS) linux --queues 1 $(HARNESS_ARGS)
	$(HARNESS) linux --queues 4 $(HARNESS_ARGS)
	$(HARNESS) linux --queues 1 --held-read $(HARNESS_ARGS)
	$(HARNESS) linux --queues 1 --hotplug $(HARNESS_ARGS)

# The data-integrity soak (SOAK_MINUTES, default 10): stamped writes and checked reads
# through the harness's frontend on 4 queues while faults come and go, LUs and the device
# are reset, the frontend reconnects and the backend is killed (-9) and restarted. Exits
# non-zero on the first lost or torn block. Not part of `make test`.
soak: setup
	$(CARGO) build --release -p flakyhba-backend -p flakyhba-harness
	$(HARNESS) soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

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
