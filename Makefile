# latentguard developer entry points. Every target installs what it needs into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
# code generation in its own venv: this grpcio-tools' protoc writes gencode 6.30, which runs on
# protobuf 6.30+ and 7.x alike (a newer protoc would pin users to protobuf 7, away from tritonclient)
PROTOC_VENV  := .venv-protoc
PROTOC_STAMP := $(PROTOC_VENV)/.installed
GRPC_TOOLS   := grpcio-tools==1.72.2
PROTOS       := protos/latentguard/v1/guardrail.proto protos/latentguard/oip/v2/inference.proto
# tritonclient (protobuf < 7) next to latentguard's generated code: the coexistence the OIP tests check
TRITON_VENV  := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: install demo test test-slow lint docs gpu-check profiles eval eval-tiny-sd3 eval-tiny-flux eval-tiny-sd3-fp8 eval-tiny-sd3-int4 eval-fpr eval-drift bench protos promtool chromium clean train quality soak kernels-aot

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (pinned: an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $(STAMP)

install: $(STAMP)

$(PROTOC_STAMP):
	test -x $(PROTOC_VENV)/bin/python || $(PY) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/pip install -q "$(GRPC_TOOLS)"
	touch $@

$(TRITON_STAMP): pyproject.toml
	test -x $(TRITON_VENV)/bin/python || $(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q "tritonclient[grpc]"
	$(TRITON_VENV)/bin/pip install -q --no-deps -e .
	touch $@

## demo: serve on loopback, send benign and drilled requests over gRPC, print verdicts and /metrics rates
demo: $(STAMP)
	$(BIN)/python -P -m latentguard.server.harness.demo
	mkdir -p out
	$(BIN)/latentguard generate --local --deployment tiny-sd3 --prompt "a red circle on a blue background" \
		--seed 7 --out out/circle.png --report out/report.json

## promtool: Prometheus from Debian's packages (the metric lint test uses promtool)
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; \
		else echo "promtool missing: run 'sudo apt-get install prometheus'"; fi; }

## chromium: headless Chromium from Debian's packages (the evidence page test screenshots it)
chromium:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		else echo "chromium missing: run 'sudo apt-get install chromium'"; fi; }

test: $(STAMP) $(PROTOC_STAMP) $(TRITON_STAMP) promtool chromium
	$(BIN)/python -P -m pytest -q -m "not slow" --durations=20

## test-slow: the tests of a minute or more each (the CLI's default calibration of a user's folder, init)
test-slow: $(STAMP) $(PROTOC_STAMP) $(TRITON_STAMP) promtool chromium
	$(BIN)/python -P -m pytest -q -m slow

## docs: regenerate the reference pages and tables, then serve the docs site on http://127.0.0.1:8000
docs: $(STAMP)
	$(BIN)/python -P docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernels detectors server

## train: the built-in tiny-sd3 / tiny-flux weights from scratch (resumable; see training/train.py)
train: $(STAMP)
	$(BIN)/python training/train.py

## quality: do the built-in models draw what their prompts say? (evaluation/builtin-quality.md)
quality: $(STAMP)
	$(BIN)/python evaluation/builtin_quality.py

## profiles: the shipped calibration profiles, classifiers, drift references and canaries of the built-ins
PROFILES := server/pipelines/profiles
profiles: $(STAMP)
	for d in tiny-sd3 tiny-flux tiny-sd3-fp8 tiny-sd3-int4; do \
		$(BIN)/latentguard train-classifier --deployment $$d --out $(PROFILES)/$$d.json || exit 1; \
		$(BIN)/latentguard drift-reference --deployment $$d || exit 1; \
		$(BIN)/latentguard canary-reference --deployment $$d || exit 1; done

## kernels-aot: compile the Triton kernel for sm_80/86/89/90 here (no GPU) and check each fits
kernels-aot: $(STAMP)
	$(BIN)/python -P -W ignore -m latentguard.kernels.aot

## soak: the hostile-input tests at 10x the examples, printing their counts
soak: $(STAMP) promtool
	LATENTGUARD_FUZZ_EXAMPLES=10000 $(BIN)/python -P -m pytest -q -s tests/server/test_hostile.py

## eval: detection evaluation (AUROC, TPR at calibrated FPR, delay) -> evaluation/results.md
eval: $(STAMP)
	$(BIN)/python evaluation/evaluate_detectors.py

## eval-DEPLOYMENT (e.g. eval-tiny-flux): the same for one deployment -> evaluation/results-DEPLOYMENT.md
eval-tiny-sd3 eval-tiny-flux eval-tiny-sd3-fp8 eval-tiny-sd3-int4: eval-%: $(STAMP)
	$(BIN)/python evaluation/evaluate_detectors.py --deployments $* --out results-$*

## eval-fpr: only the benign false-positive rate on fresh prompts, 2000 runs per deployment -> evaluation/fpr.md
eval-fpr: $(STAMP)
	$(BIN)/python evaluation/evaluate_detectors.py --benign-only --out fpr

## eval-drift: fleet drift on the built-ins: false alarms, and which model changes are caught how fast
eval-drift: $(STAMP)
	$(BIN)/python evaluation/evaluate_drift.py

## gpu-check: the one-shot GPU check (<= 8 min on one GPU) -> benchmarks/gpu-check.{json,md}, a row in gpu_check.csv
gpu-check: $(STAMP)
	$(BIN)/python -P benchmarks/gpu_check.py --out benchmarks/gpu-check.json

## bench: kernel benchmarks (CPU always; GPU rows when CUDA is present), service, shadow mode, Ray
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_shadow.py
	$(BIN)/python benchmarks/bench_ray.py

clean:
	rm -rf $(VENV) $(PROTOC_VENV) $(TRITON_VENV) out site .pytest_cache .ruff_cache .mypy_cache

## protos: regenerate the Python gRPC code next to the .proto sources
protos: $(PROTOC_STAMP)
	$(PROTOC_VENV)/bin/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)
