# latentguard developer entry points. Every target installs what it needs into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install demo test lint profiles eval bench protos promtool clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (pinned: an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## demo: serve on loopback, send benign and drilled requests over gRPC, print verdicts and /metrics rates
demo: $(STAMP)
	$(BIN)/python -m latentguard.server.harness.demo
	mkdir -p out
	$(BIN)/latentguard generate --local --deployment tiny-sd3 --prompt "a red fox" --seed 7 \
		--out out/fox.png --report out/report.json

## promtool: Prometheus from Debian's packages (the metric lint test uses promtool)
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; \
		else echo "promtool missing: run 'sudo apt-get install prometheus'"; fi; }

test: $(STAMP) promtool
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernels detectors server

## profiles: regenerate the shipped calibration profiles of the built-in deployments
profiles: $(STAMP)
	$(BIN)/latentguard calibrate --deployment tiny-sd3 --seeds 16 --out server/pipelines/profiles/tiny-sd3.json
	$(BIN)/latentguard calibrate --deployment tiny-flux --seeds 16 --out server/pipelines/profiles/tiny-flux.json
	$(BIN)/latentguard calibrate --deployment tiny-sd3-fp8 --seeds 16 --out server/pipelines/profiles/tiny-sd3-fp8.json
	$(BIN)/latentguard calibrate --deployment tiny-sd3-int4 --seeds 16 --out server/pipelines/profiles/tiny-sd3-int4.json

## eval: detection evaluation (AUROC, TPR at calibrated FPR, delay) -> evaluation/results.md
eval: $(STAMP)
	$(BIN)/python evaluation/evaluate_detectors.py

## bench: kernel benchmarks (CPU always; GPU rows when CUDA is present), service, shadow mode
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_shadow.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache

## protos: regenerate the Python gRPC code next to the .proto sources
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos \
		protos/latentguard/v1/guardrail.proto
