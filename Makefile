SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV := .venv
PYTHON := $(VENV)/bin/python
PROTO_FILES := $(shell find protos -name '*.proto')
DESCRIPTOR := gateway/aitask.pb
OPENAPI := gateway/openapi.json
STAMP := .local/installed.stamp
PYTEST_ARGS ?=
# Tests run in random order (pytest-randomly), one seed per make run, printed first: replay an order with
# `make test TEST_SEED=<seed>`.
TEST_SEED := $(or $(TEST_SEED),$(shell od -An -N4 -tu4 /dev/urandom | tr -d ' '))
RANDOM_ORDER = -p randomly --randomly-seed=$(TEST_SEED)

.PHONY: help install protos run dev show-logs clean-logs api-key doctor test test-fast lint

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-28s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) $(DESCRIPTOR) ## Install Redis, FerretDB and the locked Python environment; generate stubs

$(STAMP): pyproject.toml uv.lock client/pyproject.toml scripts/install-deps.sh tools/ferretdb/go.mod tools/ferretdb/main.go tools/seaweedfs/go.mod
	scripts/install-deps.sh
	@mkdir -p $(@D) && touch $@

protos: $(DESCRIPTOR) $(OPENAPI) ## Generate Python stubs (.py, .pyi, grpc), Envoy's descriptor set and the OpenAPI document from protos/

$(DESCRIPTOR): $(PROTO_FILES) scripts/protoc.py $(STAMP)
	rm -rf aitask
	$(PYTHON) scripts/protoc.py $(PROTO_FILES)

# Committed (the wheel and the images need no Go); a fast test fails when it is out of date.
$(OPENAPI): $(DESCRIPTOR) scripts/openapi.py
	$(PYTHON) scripts/openapi.py

run: install ## Start the whole stack locally (simulated upstream when no API keys are set)
	$(PYTHON) -m devstack

dev: install ## Like run, but restart each Python service when its source changes
	$(PYTHON) -m devstack --reload

show-logs: ## Follow today's log file of every service (logs/<service>-YYYY-MM-DD.log)
	@ls logs/*-$$(date +%F).log >/dev/null 2>&1 || { echo "no logs for today under logs/"; exit 0; }
	tail -n 20 -F logs/*-$$(date +%F).log

clean-logs: ## Delete every service log file under logs/
	rm -f logs/*.log

doctor: ## Check what make run needs (tools, builds, free ports, keys); prints the fix for each problem, changes nothing
	@python3 -m devstack.doctor

api-key: install ## Create, list or revoke API keys: make api-key ARGS="create --user-id user-1" (list; revoke KEY_ID)
	$(PYTHON) -m task_service.api_keys $(or $(ARGS),--help)

test: install tools-kustomize ## Run every test (both tiers) in random order, the stack tier against a real stack on free loopback ports
	@echo "test order: --randomly-seed=$(TEST_SEED) (replay: make test TEST_SEED=$(TEST_SEED))"
	$(PYTHON) -m pytest $(RANDOM_ORDER) $(PYTEST_ARGS)

test-fast: install tools-kustomize ## Run the fast tier only: no stack, at most a lone Redis (-m "not stack and not slow")
	@echo "test order: --randomly-seed=$(TEST_SEED) (replay: make test-fast TEST_SEED=$(TEST_SEED))"
	$(PYTHON) -m pytest -m "not stack and not slow" -n 2 $(RANDOM_ORDER) $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

include deploy/deploy.mk
include dispatcher_service/queue_admin.mk
include bench/bench.mk
