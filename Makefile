# Quickstart targets. Both run scripts/setup.sh first (idempotent: a stamp skips it once done).
.PHONY: setup demo sweep-demo effect effect-long test bench
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fastbd build-beton --config configs/poison/demo.yaml --out out/demo --force
	.venv/bin/fastbd inspect out/demo
	rm -rf runs/demo_poisoned runs/demo_clean runs/demo_distilled
	.venv/bin/fastbd train --config configs/ssl/demo_cpu.yaml data.path=out/demo out=runs/demo_poisoned
	.venv/bin/fastbd train --config configs/ssl/demo_cpu.yaml data.path=out/demo data.rate=0 out=runs/demo_clean
	.venv/bin/fastbd eval --run runs/demo_poisoned data=out/demo res=64 resize=73 probe.label_fraction=0.1
	.venv/bin/fastbd eval --run runs/demo_clean data=out/demo res=64 resize=73 probe.label_fraction=0.1
	.venv/bin/fastbd distill --teacher runs/demo_poisoned --config configs/distill/demo_cpu.yaml data=out/demo out=runs/demo_distilled
	.venv/bin/fastbd eval --run runs/demo_distilled data=out/demo res=64 resize=73 probe.label_fraction=0.1
	.venv/bin/fastbd compare runs/demo_clean runs/demo_poisoned runs/demo_distilled

sweep-demo: setup
	.venv/bin/fastbd sweep --config configs/sweeps/demo.yaml

# The backdoor measured on the CPU: poisoned vs clean MoCo v2 and BYOL, two seeds, probe, kNN, distillation.
effect: setup
	.venv/bin/fastbd sweep --config configs/repro/effect.yaml
	cat sweeps/effect/summary.md

# The long variant (MoCo v2, 17-px trigger on 0.9 of the target class, eight seeds, distilled): about 90 min on
# 2 cores; resumable, so `nohup make effect-long &` and run it again after a stop.
effect-long: setup
	.venv/bin/fastbd sweep --config configs/repro/effect_long.yaml
	cat sweeps/effect_long/summary.md

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/build_throughput.py
