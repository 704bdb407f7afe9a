# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/dagster_home
export VLLM_CPU_KVCACHE_SPACE ?= 1
export PYTHONHASHSEED := 0

.PHONY: install run test test-fast ui bench clean

install:            ## install what is missing (apt packages, .venv, CPU stack, the project)
	bash scripts/install.sh

run: install        ## materialize the whole asset graph on the demo sample
	$(PY) -m assets.demo

test: install       ## the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest -q

test-fast: install  ## everything but the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow"

ui: install         ## Dagster webserver + daemon on http://127.0.0.1:3000
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

bench: install      ## benchmarks; tables are written into README.md
	$(PY) -m bench.bench_phash
	$(PY) -m bench.bench_neardup
	$(PY) -m bench.bench_shards
	$(PY) -m bench.bench_generation
	$(PY) -m bench.bench_verify
	$(PY) -m bench.bench_minhash
	$(PY) -m bench.bench_html
	$(PY) -m bench.bench_pdf
	$(PY) -m bench.bench_video
	$(PY) -m bench.bench_scale

clean:              ## remove the demo data and the Dagster instance's run history
	rm -rf data dagster_home/history dagster_home/storage dagster_home/schedules dagster_home/*.db dagster_home/logs
