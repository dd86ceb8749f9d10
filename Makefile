# Quickstart targets. Both run scripts/setup.sh first (idempotent: a stamp skips it once done).
.PHONY: setup demo test bench
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fastbd build-beton --config configs/poison/demo.yaml --out out/demo --force
	.venv/bin/fastbd inspect out/demo
	rm -rf runs/demo
	.venv/bin/fastbd train --config configs/ssl/demo_cpu.yaml data.path=out/demo out=runs/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/build_throughput.py
