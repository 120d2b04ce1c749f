# rscert: `make demo` and `make test` each set up .venv on first use (Python 3.11 + make is all they need).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rscert-installed
DEMO_OUT ?= demo-output

.PHONY: demo test lint bench clean-demo setup

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/torch.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/torch.txt
	$(BIN)/python -m pip install -q -r requirements/torch.txt -e '.[dev]'
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench jobs

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/rscert demo --out $(DEMO_OUT)

bench: $(STAMP)
	$(BIN)/python bench/sampler_bench.py

clean-demo:
	rm -rf $(DEMO_OUT)
