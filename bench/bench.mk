# Benchmarks (bench/README.md). The main Makefile includes this file: `include bench/bench.mk`.
# Uses $(PYTHON) and the `install` target from there.

GHZ_VERSION := v0.121.0
GHZ := .local/bin/ghz
SCENARIO ?=
PROFILE ?=

.PHONY: bench tools-ghz

bench: install $(GHZ) ## Start the stack, run every benchmark scenario, write bench/results/ (SCENARIO=name: one; PROFILE=1: py-spy too)
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; \
	  $$([ "$$(id -u)" -eq 0 ] || echo sudo) apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	uv sync --frozen --inexact --group bench --quiet
	$(PYTHON) -m bench.harness $(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(PROFILE),--profile)

tools-ghz: ## Install ghz, the gRPC load generator (version pinned in bench/bench.mk), into .local/bin
	GOBIN=$(CURDIR)/.local/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(GHZ):
	$(MAKE) tools-ghz
