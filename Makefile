# Benchmarks: each script prints a markdown table and writes its section of docs/benchmarks.md.
# `make bench` runs the CPU suite at its documented sizes (about 10-15 minutes on 2 cores);
# `make bench-quick` runs reduced sizes in a few minutes. Knobs: make bench BENCH_REPEAT=3 BENCH_LAYERS=8
PYTHON ?= .venv/bin/python
BENCH_REPEAT ?= 2
BENCH_LAYERS ?= 8

.PHONY: bench bench-quick bench-dit bench-growth bench-vae bench-e2e bench-gpu bench-gpu-smoke

bench: bench-dit bench-growth bench-vae bench-e2e

bench-quick:
	$(PYTHON) benchmarks/dit_step.py --layers 2 --repeat 1
	$(PYTHON) benchmarks/cost_growth.py --chunks 2 4 8 --steps 4
	$(PYTHON) benchmarks/vae.py --size 256 --frames 12 --repeat 1
	$(PYTHON) benchmarks/end_to_end.py --repeat 1 || true

bench-dit:
	$(PYTHON) benchmarks/dit_step.py --layers $(BENCH_LAYERS) --repeat $(BENCH_REPEAT)

bench-growth:
	$(PYTHON) benchmarks/cost_growth.py --chunks 2 4 8 16 19

bench-vae:
	$(PYTHON) benchmarks/vae.py --repeat $(BENCH_REPEAT)

# needs the shipped demo model; reports (and does not fail the suite) when it is missing
bench-e2e:
	$(PYTHON) benchmarks/end_to_end.py --repeat $(BENCH_REPEAT) || true

# on a GPU machine: the 4.5B configuration at 720x720
bench-gpu:
	$(PYTHON) benchmarks/gpu.py --repeat $(BENCH_REPEAT)

bench-gpu-smoke:
	$(PYTHON) benchmarks/gpu.py --smoke --no-save
