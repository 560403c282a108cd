# Two commands for a new user: `make demo` and `make test`. Both set up .venv first (idempotent).
DATA ?= ../shared/data/celeba-mini
OUT ?= out/demo
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo lint test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m facelab.demo --data "$(DATA)" --out "$(OUT)"

lint: setup
	$(PY) -m ruff check facelab tests bench
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/tasks.py
	$(PY) bench/prepare.py
	$(PY) bench/prepare_shards.py
	$(PY) bench/train.py
	$(PY) -m facelab train $(DATA) --model lenet5 --epochs 2 --name bench-serve --overwrite
	$(PY) -m facelab train $(DATA) --model efficientnet_lite0 --size 128 --epochs 2 --name bench-serve-lite0 --overwrite
	$(PY) bench/serve.py --run runs/bench-serve runs/bench-serve-lite0
	$(PY) bench/attack.py --run runs/bench-serve
	$(PY) bench/people.py
	$(PY) bench/evaluate.py
	$(PY) bench/inspect_collect.py

clean:
	rm -rf out runs .cache
