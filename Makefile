# SPDX-License-Identifier: Apache-2.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: install train train-golden test test-fast sim lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

train: $(STAMP)
	$(BIN)/spikeforge train --backend sim --model mlp --dataset digits --epochs 10 \
		--json runs/train.json --resume runs/train.pt
	$(BIN)/spikeforge train --backend golden --precision fp16 --model mlp --dataset digits \
		--epochs 10 --quiet --json runs/golden16.json --checkpoint runs/golden16.pt
	$(BIN)/spikeforge compare runs/train.pt runs/golden16.pt
	$(BIN)/spikeforge report runs

train-golden: $(STAMP)
	$(BIN)/spikeforge train --backend golden --model mlp --dataset digits --epochs 10 \
		--json runs/golden.json --checkpoint runs/golden.pt

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --doctest-modules sw hw gen boards tests sim

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow" --doctest-modules sw hw gen boards tests sim

sim: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) sim

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf sim_build runs .pytest_cache
