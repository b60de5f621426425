# mosto: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first (tools/install-deps.sh, idempotent).

PY      := .venv/bin/python
CLANG   ?= clang
ARCH    := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -Ishared \
              -I/usr/include/$(shell uname -m)-linux-gnu

# Sizes in shared/contract.h can be overridden: make BPF_DEFINES=-DMOSTO_MAX_ENTRIES=262144
BPF_DEFINES ?=

# One source, two hooks: build/X.bpf.o for XDP, build/X_tc.bpf.o for tc (ebpf/ctx/).
BPF_OBJS := build/splice.bpf.o build/parse_only.bpf.o build/splice_tc.bpf.o build/parse_only_tc.bpf.o
BPF_HDRS := $(wildcard ebpf/*.h ebpf/ctx/*.h) shared/contract.h

.PHONY: all deps build test lint typecheck unit fresh-host-test bench stress demo demo-wan repro xdp-test tc-test bmv2-test install-objects clean

all: build

deps: .venv/.mosto-installed
.venv/.mosto-installed: pyproject.toml tools/install-deps.sh
	./tools/install-deps.sh

build: deps $(BPF_OBJS) build/delayline

build/%_tc.bpf.o: ebpf/%.bpf.c $(BPF_HDRS)
	@mkdir -p build
	$(CLANG) $(BPF_CFLAGS) $(BPF_DEFINES) -DMOSTO_HOOK_TC -c $< -o $@

build/%.bpf.o: ebpf/%.bpf.c $(BPF_HDRS)
	@mkdir -p build
	$(CLANG) $(BPF_CFLAGS) $(BPF_DEFINES) -c $< -o $@

# The user-space delay line for WAN topologies (tools/delayline/README.md)
build/delayline: tools/delayline/delayline.c
	@mkdir -p build
	$(CC) -O2 -g -std=gnu11 -Wall -Wextra -Werror -pthread $< -o $@

lint: deps
	.venv/bin/ruff check control ebpf ptf_tests tools
	.venv/bin/ruff format --check control ebpf ptf_tests tools

typecheck: deps
	cd control && ../.venv/bin/mypy --config-file ../pyproject.toml -p mosto

# The tiers (conftest.py): unit needs nothing; kernel and e2e need root.
unit: deps
	$(PY) -m pytest -q control/tests/unit

# A host as it boots has no bpffs at /sys/fs/bpf: run a hand-over suite in a
# private mount namespace without one, whatever this machine has mounted.
FRESH_HOST_TESTS := control/tests/e2e/test_e2e.py::test_quiet_flows_handed_over_at_once \
                    control/tests/e2e/test_e2e.py::test_transfer_handed_over_mid_stream
fresh-host-test: build
	unshare -m --propagation private sh -c \
	  'while umount /sys/fs/bpf 2>/dev/null; do :; done; \
	   $(PY) -m pytest -q -p no:cacheprovider $(FRESH_HOST_TESTS) -k "quiet or 1MiB"'

# The stress module fits (about 45 s on 2 cores): make test runs it too.
test: build lint typecheck
	MOSTO_STRESS=1 $(PY) -m pytest -q
	$(MAKE) --no-print-directory fresh-host-test
	$(MAKE) --no-print-directory xdp-test
	$(MAKE) --no-print-directory tc-test
	@./tools/bmv2-available.sh || echo "mosto: BMv2 suite skipped: $$(./tools/bmv2-available.sh --why)"

xdp-test: build
	$(PY) tools/run_ptf.py --target xdp

tc-test: build
	$(PY) tools/run_ptf.py --target tc

bmv2-test: build
	@./tools/bmv2-available.sh --why-fail
	$(PY) tools/run_ptf.py --target bmv2
	$(PY) -m pytest -q control/tests/e2e/test_bmv2_handover.py control/tests/e2e/test_bmv2_shell.py \
	    control/tests/unit/test_bmv2_entry_encoding.py
	$(PY) tools/diff_bmv2.py --examples 1500

# 5,000 quiet and 200 bulk flows handed over at once, every byte checked
# (control/tests/e2e/test_stress.py; the normal run skips it).
stress: build
	MOSTO_STRESS=1 $(PY) -m pytest -q control/tests/e2e/test_stress.py

# bench_throughput.py also gives tools/bench_xdp.py's per-packet costs (its fixtures).
bench: build
	$(PY) tools/bench_throughput.py --bpf-stats
	$(PY) tools/bench_chains.py
	$(PY) tools/bench_handover.py

demo: build
	$(PY) tools/demo.py

# For an installed (not editable) package: the objects where it looks for them.
PREFIX ?= /usr/local
install-objects: build
	install -d $(PREFIX)/share/mosto
	install -m 0644 $(BPF_OBJS) $(PREFIX)/share/mosto/

# Three proxies on a 100 ms path: slow-start ends, delay steps and hand-overs
# as they happen, then 1 MB direct against through the chain.
demo-wan: build
	$(PY) tools/demo_wan.py

# The paper's Figs. 4 and 5 in full (minutes; their --quick runs are in make test).
repro: build
	.venv/bin/mosto repro fig4 --out build/repro
	.venv/bin/mosto repro fig5 --out build/repro

clean:
	rm -rf build
