# Two commands for a new user: `make demo` and `make test`. Both set up .venv first (idempotent).
DATA ?= ../shared/data/celeba-mini
OUT ?= out/demo
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m facelab.demo --data "$(DATA)" --out "$(OUT)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/serve.py
	$(PY) bench/people.py

clean:
	rm -rf out runs .cache
