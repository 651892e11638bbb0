# psvis: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV      = $(shell scripts/install-uv.sh)
PY      = .venv/bin/python
PROTOS  = $(shell find proto -name '*.proto')
GEN_DIR = libs/psvis-kernel/src
STAMP   = .venv/.psvis-synced

.PHONY: help setup proto run test lint typecheck unit e2e distributed bench clean services-start services-stop

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# bytecode is compiled when installing (as pip does), so that no command, nor any worker process
# it starts, compiles the libraries it imports, even where PYTHONDONTWRITEBYTECODE is set
$(STAMP): uv.lock pyproject.toml libs/psvis-kernel/pyproject.toml services/registry/pyproject.toml Makefile
	@"$(UV)" sync --frozen --quiet --compile-bytecode
	@touch $@

setup: $(STAMP) proto ## virtual environment with the pinned dependencies, and generated code

proto: $(STAMP) ## generate the protobuf and gRPC code from proto/ (and compile the project's bytecode)
	@$(PY) -m grpc_tools.protoc -Iproto --python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) \
	  --grpc_python_out=$(GEN_DIR) $(PROTOS)
	@$(PY) -m compileall -q -j0 $(GEN_DIR) services/registry/src > /dev/null

run: setup ## start the whole platform embedded (SQLite, loopback, dev certificates)
	@.venv/bin/psvis serve

lint: setup ## ruff, buf lint, buf breaking, the rule packs (psvis rules check) and helm lint
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@"$$(scripts/install-buf.sh)" lint
	@scripts/buf-breaking.sh "$$(scripts/install-buf.sh)"
	@.venv/bin/psvis rules check
	@"$$(scripts/install-helm.sh)" lint --strict --quiet helm/psvis -f helm/psvis/ci/distributed-values.yaml

typecheck: setup ## mypy --strict on the kernel and the services
	@.venv/bin/mypy libs/psvis-kernel/src/psvis services/registry/src/psvis_registry

unit: setup ## unit and embedded tests only (no Kafka, no MongoDB)
	@scripts/install-grpcurl.sh >/dev/null
	@scripts/install-helm.sh >/dev/null
	@$(PY) -m pytest -m "not distributed" -q

test: setup lint typecheck ## everything: lint, types, unit, integration and e2e on both stacks, the chart
	@scripts/install-grpcurl.sh >/dev/null
	@scripts/install-helm.sh >/dev/null
	@scripts/services.sh start >/dev/null
	@source .run/services/env && $(PY) -m pytest; rc=$$?; scripts/services.sh stop; exit $$rc

bench: setup ## benchmarks, side by side with their baselines
	@$(PY) bench/run_all.py

clean: ## remove generated code, the venv and local state
	@find $(GEN_DIR)/psvis -name '*_pb2*.py*' -delete
	@rm -rf .venv .run
