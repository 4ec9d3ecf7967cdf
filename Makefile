# Thin wrappers over cargo and the harness. `make qemu-test` and `make test` set up
# everything on a fresh machine (see scripts/setup.sh).

CARGO        ?= cargo
GUEST_TARGET := x86_64-unknown-none
BACKEND      := $(CURDIR)/target/release/vhost-user-flakyhba
IMAGE        := $(CURDIR)/target/$(GUEST_TARGET)/release/flakyhba-guest
HARNESS      := $(CURDIR)/target/release/flakyhba-harness
HARNESS_ARGS ?=

# The harness and its tests find the binaries through these.
export FLAKYHBA_BACKEND := $(BACKEND)
export FLAKYHBA_IMAGE   := $(IMAGE)

.PHONY: all setup build test qemu-test lint clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p flakyhba-backend -p flakyhba-harness
	$(CARGO) build --release -p flakyhba-guest --target $(GUEST_TARGET)

# All tests: unit tests of every host crate, the guest library's host tests against the
# simulated HBA, and the harness's QEMU scenarios (which need the release binaries).
test: build
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory qemu-test

qemu-test: build
	$(HARNESS) run smoke --irq on $(HARNESS_ARGS)
	$(HARNESS) run smoke --irq off $(HARNESS_ARGS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p guest-miniport -p flakyhba-guest --target $(GUEST_TARGET) -- -D warnings

clean:
	$(CARGO) clean
