# toolkit: `make demo` runs the whole pipeline on a small built-in dataset, `make test` the tests.
# Both set up .venv first. Override the torch pin with e.g. `make install TORCH=2.5.1`.
# `make reference` installs nnU-Net v2 2.8.1 into bench/.venv-nnunet (the agreement tests use it;
# reused while bench/nnunet-requirements.txt is unchanged); `make docs` regenerates the CLI
# reference in docs/reference/cli/ from the Typer app.
PYTHON ?= python3
TORCH ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH)
DEMO_DIR ?= demo
# the demo preset's time budget (4 min 30 s); a busy machine may need more: make demo DEMO_BUDGET=10m
DEMO_BUDGET ?=
PYTEST_ARGS ?= -n 2

.PHONY: install demo test test-fast bench lint clean reference docs

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: anything else lets pip pick a multi-GB CUDA build
	$(BIN)/python -m pip install --disable-pip-version-check -q "torch==$(TORCH)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: install
	$(BIN)/toolkit demo-data $(DEMO_DIR)/source --task mr --cases 12 --force
	$(BIN)/toolkit convert $(DEMO_DIR)/source/Task901_SynthMR --workspace $(DEMO_DIR)/workspace --force
	$(BIN)/toolkit run-all Task901_SynthMR --workspace $(DEMO_DIR)/workspace --preset demo $(if $(DEMO_BUDGET),--time-budget $(DEMO_BUDGET))
	$(BIN)/toolkit export-container Task901_SynthMR --workspace $(DEMO_DIR)/workspace --no-build
	@echo
	@echo "demo finished:"
	@echo "  dataset:    $(DEMO_DIR)/workspace/Task901_SynthMR"
	@echo "  report:     $(DEMO_DIR)/workspace/Task901_SynthMR/evaluation/report.md"
	@echo "  selection:  $(DEMO_DIR)/workspace/Task901_SynthMR/selection.json"
	@echo "  container:  $(DEMO_DIR)/workspace/Task901_SynthMR/export/context (build it: toolkit export-container Task901_SynthMR -w $(DEMO_DIR)/workspace)"
	@echo "  model card: $(DEMO_DIR)/workspace/Task901_SynthMR/export/README.md"
	@echo "  status:     $(BIN)/toolkit status Task901_SynthMR --workspace $(DEMO_DIR)/workspace"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"

bench: install
	$(BIN)/python -m bench

reference: install
	$(BIN)/python -m bench.reference_venv

docs: install
	$(BIN)/python docs/cli_reference.py

lint: install
	$(BIN)/ruff check toolkit tests bench docs/cli_reference.py
	$(BIN)/ruff format --check toolkit tests bench docs/cli_reference.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build *.egg-info
