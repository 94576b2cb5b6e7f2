# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench notebooks notebooks-run clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[dev]"
	touch $(VENV)/.installed $@

$(VENV)/.installed-notebooks: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[notebooks]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/lpusim estimate --model tiny-llama --hw teaching
	$(BIN)/lpusim validate --model tiny-llama --tokens 16

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -n 2 tests/sim -k "engine or select or icu"
	$(MAKE) -j 2 --output-sync=target --no-print-directory $(SMALL_BENCHES)

# Every benchmark at its small size (they keep working; their figures are not timed here), two at
# a time: `make test` runs them after the suite, on CI's two cores.
BENCHES := sweep_speed compile_speed scale sim_speed calibrate_gpu roofline sram_bandwidth
SMALL_BENCHES := $(BENCHES:%=bench-small-%)
.PHONY: $(SMALL_BENCHES)
$(SMALL_BENCHES): bench-small-%:
	$(BIN)/python benchmarks/$*.py --small

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/sim_speed.py
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/roofline.py
	$(BIN)/python benchmarks/sram_bandwidth.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/sweep_speed.py

# Opens the teaching and research notebooks in JupyterLab (installs the `notebooks` extra once).
notebooks: $(VENV)/.installed-notebooks
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build *.egg-info

# Execute every notebook and keep its outputs in the file (commit them: they read on a code host).
notebooks-run: $(VENV)/.installed-dev
	cd notebooks && ../$(BIN)/python -c "import glob, nbformat; from nbclient import NotebookClient; \
	[(nb := nbformat.read(p, as_version=4), NotebookClient(nb, timeout=600).execute(), \
	  nbformat.write(nb, p), print('executed', p)) for p in sorted(glob.glob('*.ipynb'))]"
