# CLIP-InterpreT — the few targets people expect.
#   make demo   set up, build the demo store on first use, open the dashboard
#   make test   set up (incl. headless Chromium for the browser tests) and run every test tier
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STORE   ?= artifacts/demo
N_DEMO  ?= 5000

.PHONY: setup demo demo-store dashboard test test-fast lint format bench train-demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,distributed]"
	touch $(STAMP)

demo: setup demo-store dashboard

demo-store: setup
	$(BIN)/python -m engine demo-store --store $(STORE) --images $(N_DEMO)

dashboard: setup
	$(BIN)/streamlit run dashboard/Home.py

test: setup
	bash scripts/setup_browser.sh
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "unit"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/run_all.py

train-demo: setup
	$(BIN)/python scripts/train_demo_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
