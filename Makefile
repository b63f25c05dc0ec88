# latentguard developer entry points. Every target installs what it needs into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install demo test test-fast lint profiles eval bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (pinned: an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,quant]"
	touch $(STAMP)

install: $(STAMP)

## demo: generate one guarded image in process, then the same request with an aliasing drill
demo: $(STAMP)
	mkdir -p out
	$(BIN)/latentguard generate --local --deployment tiny-sd3 --prompt "a red fox" --seed 7 \
		--out out/fox.png --report out/report.json
	$(BIN)/latentguard generate --local --deployment tiny-sd3 --prompt "a red fox" --seed 7 \
		--drill aliasing:step=4,strength=0.5 --report out/report-drill.json
	$(BIN)/latentguard generate --local --deployment tiny-flux --prompt "a red fox" --seed 7 \
		--drill nan:step=3 --report out/report-nan.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernels detectors server

## profiles: regenerate the shipped calibration profiles of the built-in deployments
profiles: $(STAMP)
	$(BIN)/latentguard calibrate --deployment tiny-sd3 --out server/profiles/tiny-sd3.json
	$(BIN)/latentguard calibrate --deployment tiny-flux --out server/profiles/tiny-flux.json

## eval: detection evaluation (AUROC, TPR at calibrated FPR, delay) -> evaluation/results.md
eval: $(STAMP)
	$(BIN)/python evaluation/evaluate_detectors.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache
