# Quickstart: `make demo` (environment + pre-training on a generated digits dataset), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output
# Everything runs offline: data is generated locally, nothing is fetched from the Hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv test demo lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

test: venv
	$(OFFLINE) $(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check .

demo: venv
	$(OFFLINE) bash scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
