# Two entry points for a fresh machine: `make book` and `make test`.
# Both create and fill the project's own virtual environment first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.normlib-installed
JB := $(BIN)/jupyter-book
BUILD := _build
# Chapters are re-executed whenever the library changes: Jupyter Book's
# execution cache hashes only notebook cells, so the build directory is keyed
# on the library's sources and the environment's pins as well.
LIB_HASH = $(shell cat pyproject.toml constraints.txt $$(find normlib -name '*.py' | LC_ALL=C sort) | sha256sum | cut -c1-16)
export NORMLIB_CACHE_DIR ?= $(CURDIR)/.normlib-cache
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test unit visible-cells build-strict site-check notebooks lab clean venv lint cache-key

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and pinned, so that no later package pulls in another torch build as a dependency.
	$(BIN)/python -m pip install -q torch==2.13.0
	@# The peers whose models the integration tests build, without their dependencies: torchvision's
	@# wheel would pull another torch, and timm's other requirements serve pretrained weights only.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt torchvision==0.28.0 timm==1.0.29
	@# Every other package at the exact version of constraints.txt: the same environment on every machine.
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,test,lab]"
	@touch $(STAMP)

# Drop the build (and its execution cache) when the library changed.
cache-key: $(STAMP)
	@mkdir -p $(BUILD)
	@if [ "$$(cat $(BUILD)/.normlib-hash 2>/dev/null)" != "$(LIB_HASH)" ]; then \
	  echo "normlib changed: chapters will be re-executed"; \
	  rm -rf $(BUILD)/.jupyter_cache $(BUILD)/.doctrees $(BUILD)/html $(BUILD)/jupyter_execute; \
	  mkdir -p $(BUILD); echo "$(LIB_HASH)" > $(BUILD)/.normlib-hash; fi

book: cache-key
	$(JB) build .
	@echo
	@echo "The book is at file://$(CURDIR)/$(BUILD)/html/index.html"

# Unit, property and doctests; the visible-cells and browser tests run in their own steps.
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not visible_cells and not site_check"

# Every chapter's visible code, in order, in a fresh kernel at the small size:
# a reader who copies it reproduces every visible output.
visible-cells: $(STAMP)
	$(BIN)/python -m pytest -m visible_cells --durations=12 tests/test_visible_cells.py

# Warnings are errors, missing references are errors, a failing cell fails it.
build-strict: cache-key
	$(JB) build --all -W -n --keep-going .

# The browser check's own tests (a small site that breaks every rule), then the check.
site-check: $(STAMP)
	$(BIN)/python -m pytest -m site_check tests/test_check_site.py
	$(BIN)/python tests/check_site.py $(BUILD)/html

# In this order even under `make -j`: the browser check reads the strict build's output.
test: $(STAMP)
	$(MAKE) --no-print-directory unit
	@# The visible-cells run and the strict build execute the chapters independently; side by
	@# side they share the two cores (and the training cache) instead of waiting in turn.
	$(MAKE) --no-print-directory -j2 --output-sync=target visible-cells build-strict
	$(MAKE) --no-print-directory site-check

lint: $(STAMP)
	$(BIN)/ruff check normlib tests benchmarks

notebooks: $(STAMP)
	@mkdir -p notebooks
	for f in chapters/*.md; do \
	  $(BIN)/jupytext --to ipynb --output notebooks/$$(basename $${f%.md}).ipynb $$f; done
	@echo "Notebooks are in $(CURDIR)/notebooks (make lab opens them in JupyterLab)."

# JupyterLab from the project's own environment: its kernel runs .venv's Python,
# ipywidgets' front end (jupyterlab_widgets) is pinned with it. LAB_ARGS are passed
# on, e.g. `make lab LAB_ARGS="--no-browser --port 8890"`.
# JupyterLab refuses to run as root unless told (containers often run as root).
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: notebooks
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ROOT) $(LAB_ARGS)

clean:
	rm -rf $(BUILD) notebooks .pytest_cache .hypothesis $(NORMLIB_CACHE_DIR)
