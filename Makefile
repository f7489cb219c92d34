# pseudomask: `make run` runs the default workflow on the demo data; `make test` runs the tests.
# Both create .venv if missing and install everything (torch, the project, MMDetection with a cached mmcv build).

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# torch==2.13.0 by default (the CPU build where only that is available); any pip requirement and options may be given.
TORCH_SPEC  ?= torch==2.13.0
CORES       ?= all
# mmcv's compiled ops are built once per torch version and reused from this cache.
WHEEL_CACHE ?= $(HOME)/.cache/pseudomask/wheels
WHEEL_DIR   := $(WHEEL_CACHE)/$(subst ==,-,$(subst +,-,$(firstword $(TORCH_SPEC))))
CONSTRAINTS := $(VENV)/constraints.txt
PIP         := $(BIN)/python -m pip --disable-pip-version-check -q

# idle OpenMP threads spin by default, which stalls CPU torch when the cores are shared
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	printf '%s\n' "$(firstword $(TORCH_SPEC))" > $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) $(TORCH_SPEC)
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,slurm]"
	@# mmcv 2.1.0 builds (and mmengine runs) with setuptools < 70; torch only warns about it.
	$(PIP) install "setuptools<70" wheel ninja
	@if ! ls $(WHEEL_DIR)/mmcv-2.1.0-*.whl >/dev/null 2>&1; then \
	  echo "building mmcv 2.1.0 with ops into $(WHEEL_DIR) (once per machine, about 10-15 minutes)"; \
	  mkdir -p $(WHEEL_DIR) && MMCV_WITH_OPS=1 MAX_JOBS=$${MAX_JOBS:-2} $(PIP) wheel --no-build-isolation \
	    --no-deps -w $(WHEEL_DIR) mmcv==2.1.0 || exit 1; \
	fi
	$(PIP) install -c $(CONSTRAINTS) --find-links $(WHEEL_DIR) mmcv==2.1.0 mmengine==0.10.7 mmdet==3.3.0
	touch $@

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

lint: install
	$(BIN)/snakemake --lint

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf results logs resources/demo .snakemake
