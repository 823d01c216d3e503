# spantrack: top-level entry points.
#   make demo          build everything, boot the VM, load the module, show what it does
#   make test          host tests + in-VM tests on the 6.12 release and debug kernels, and an
#                      entry-point subset on the 7.3 release kernel when it is cached
#   make test-7        host tests + the 7.3 subset, building the 7.3 kernel if needed
#   make module        spantrack.ko against the cached guest kernel (VARIANT=release|debug)
#   make kernel        the guest kernel alone (cached outside the repository)
#   make setup         install what the build needs (Debian packages, bindgen)
#   make bench-micro   guest cost of a system call (tracked, untracked) and of a span begin+end
#   make bench         overhead benchmark and issue 19's load (scripts/bench.sh, results/bench)
#   make bench-overload  issue 19's load alone: Python and Rust under sustained slow spans
# Kernel-side work happens in a QEMU VM: the host kernel cannot load modules.

SHELL := /bin/bash
VARIANT ?= release
export VARIANT
ROOT := $(CURDIR)
SCRIPTS := $(ROOT)/scripts

.PHONY: all setup kernel module host user demo test test-host clean bench-micro

all: module user

setup:
	@$(SCRIPTS)/setup.sh

kernel: setup
	@$(SCRIPTS)/build-kernel.sh >/dev/null

module: kernel
	@$(SCRIPTS)/build-module.sh

user:
	@cargo build --release --workspace --quiet

demo: setup
	@$(SCRIPTS)/demo.sh

test: setup
	@$(SCRIPTS)/test.sh

.PHONY: test-7
test-7: setup
	@VARIANTS= TEST_7=1 $(SCRIPTS)/test.sh

test-host:
	@cargo test --workspace --quiet

clean:
	@$(MAKE) -s -C $$(VARIANT=$(VARIANT) $(SCRIPTS)/build-kernel.sh) M=$(ROOT) LLVM=1 RUSTC=/usr/bin/rustc clean 2>/dev/null || true
	@cargo clean
bench-micro: setup
	@$(SCRIPTS)/bench-micro.sh
.PHONY: bench bench-overload
bench: setup
	@$(SCRIPTS)/bench.sh
bench-overload: setup
	@BENCH_PARTS=overload $(SCRIPTS)/bench.sh

# Installing on a real host (README: "Installing on a host"); KDIR, PREFIX, DESTDIR, RUSTC
# may be set:
#   make install-check   what the host lacks to build and load spantrack.ko (scripts/check-host.sh)
#   make install         the check, then spantrack.ko against the running kernel's build tree
#                        (/lib/modules/$(uname -r)/build), libspanhook.so and the spantrack command
#   make install-module  / make install-user: either half; make uninstall removes both
.PHONY: install install-check install-module install-user uninstall
install-check:
	@$(SCRIPTS)/check-host.sh $(if $(KDIR),--kdir $(KDIR)) $(if $(RUSTC),--rustc $(RUSTC))
install: install-module install-user
install-module:
	@$(SCRIPTS)/install.sh module
install-user:
	@$(SCRIPTS)/install.sh user
uninstall:
	@$(SCRIPTS)/install.sh uninstall
