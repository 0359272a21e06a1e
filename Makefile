# One-command set-up and runs. `make demo` and `make test` create .venv in the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 resolves to the local CPU build on the project machines; on a GPU machine install
# the CUDA build of your choice into .venv first and this step leaves it alone.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint

$(BIN)/vst: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[server,files,test]"
	touch $(BIN)/vst

setup: $(BIN)/vst

demo: setup
	$(BIN)/vst render samples/beachball/beachball.####.exr out/demo/beachball_styled.####.exr \
		--frames 1-3 --style 19 --embedded

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
