# dpdkeni: `make test` sets everything up and runs the suite; `make demo` sets up and runs the demo.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo setup clean sdist

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml scripts/apt-packages.txt scripts/bootstrap.sh $(wildcard native/*.c native/*.h native/*.py)
	VENV=$(VENV) bash scripts/bootstrap.sh

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/dpdkeni lab demo

sdist: setup
	$(PY) -m pip install -q build && $(PY) -m build --sdist --outdir dist .

clean:
	rm -rf build dist *.egg-info dpdkeni/_native*.so dpdkeni/_native.c .pytest_cache
