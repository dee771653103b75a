# `make demo` and `make test` each create (or reuse) .venv and install the project with the
# pinned dependencies of requirements.lock before they run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-3d clean-demo findings dimensions bench-search

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the browser tests need Debian's chromium: installed here where this machine allows it (root or
# password-less sudo); elsewhere they are skipped and the run ends saying how to run them
test: $(STAMP)
	-@bash .ci/install-chromium
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m workbench demo --out runs/demo

# the 3D demo: a 3D latent diffusion model on 32^3 phantom brains, analysed (volumes and their
# axial slices) and browsable with `workbench app runs/demo3d` (time: BENCHMARKS.md)
demo-3d: $(STAMP)
	$(PY) -m workbench demo --volumes --out runs/demo3d

clean-demo:
	rm -rf runs/demo runs/demo3d

# the studies' four findings on the built-in brain phantom: 15 runs, then notebooks/08_findings
# (about 70 min on a 2-core CPU; rerunning continues where it stopped). WORKERS=2 runs two at once
# (faster where the cores are not hyperthreads of one core: measure, BENCHMARKS.md)
WORKERS ?= 1
findings: $(STAMP)
	$(PY) -m workbench sweep sweeps/findings.yaml --out runs/findings --workers $(WORKERS)

# 2D against 3D latent diffusion on the same phantom subjects (4 runs; time: BENCHMARKS.md)
dimensions: $(STAMP)
	$(PY) -m workbench sweep sweeps/dimensions.yaml --out runs/dimensions --workers $(WORKERS)

# issue 16's search benchmark in one command: workload (a) at k = 5 and k = 1, then workload (b),
# 1,000 queries against an 80,000-image store of 21 GB built on first use (about 25 min the
# first time on a 2-core CPU, 12 min after; with a float16 and an int8 row copy, 10.5 and 5.3 GB
# more), then the floors of both (what no exact search of
# this design can skip, benchmarks/search_floors.py, 3 min), auto's choices, and the copy
# analysis's searches (benchmarks/analysis_searches.py, 3 min; figures in BENCHMARKS.md)
bench-search: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) benchmarks/search.py --size 64 --k 5 --precisions auto --methods torch,faiss,index,pruned,auto --peak-n 1024 --json runs/bench-search-k5.json
	$(PY) benchmarks/search.py --size 64 --k 1 --precisions auto --methods torch,faiss,index,pruned,auto --peak-n 1024 --json runs/bench-search-k1.json
	$(PY) benchmarks/search_scale.py --json runs/bench-scale.json
	$(PY) benchmarks/search_scale.py --row-copy --json runs/bench-scale-rowcopy.json
	$(PY) benchmarks/search_scale.py --row-copy --row-copy-format int8 --json runs/bench-scale-int8.json
	$(PY) benchmarks/search_floors.py --scale --json runs/bench-floors.json
	$(PY) benchmarks/search_auto.py
	$(PY) benchmarks/analysis_searches.py --synthetic 1000 --json runs/bench-analysis-1000.json
	$(PY) benchmarks/analysis_searches.py --synthetic 6000 --json runs/bench-analysis-6000.json
	$(PY) benchmarks/search_auto_small.py --json runs/bench-auto-small.json
	$(PY) benchmarks/search_basis_dim.py --json runs/bench-basis-dim.json
	$(PY) benchmarks/search_distinct.py --json runs/bench-distinct.json
