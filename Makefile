# dpdkeni: `make test` sets everything up and runs the suite; `make demo` sets up and runs the demo.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test lint demo setup clean sdist sanitize bench-setup bench

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml scripts/apt-packages.txt scripts/bootstrap.sh $(wildcard native/*.c native/*.h native/*.py)
	VENV=$(VENV) bash scripts/bootstrap.sh

test: setup
	$(PY) tests/suite.py $(PYTEST_ARGS)

# Lint (ruff: rules in pyproject.toml, no formatting pass) and types (mypy) of the package.
lint: setup
	$(VENV)/bin/ruff check dpdkeni
	$(VENV)/bin/mypy

# The native code built with AddressSanitizer + UBSan, and the fast-path tests run under it (Python itself is not
# instrumented: the sanitizer runtimes are preloaded). The normal build is restored afterwards.
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
sanitize: setup
	DPDKENI_CFLAGS="$(SAN_FLAGS) -O1 -g" DPDKENI_LDFLAGS="$(SAN_FLAGS)" $(PY) -m pip install -q -e .
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  DPDKENI_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_native.py tests/test_fastpath.py tests/test_pmdstream.py; \
	  rc=$$?; $(PY) -m pip install -q -e . ; exit $$rc

# Benchmarks (root, bounded in time, namespaces of their own): testpmd, iperf3, redis and matplotlib for --plot.
bench-setup: setup
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  $$(sed -e 's/#.*//' -e '/^\s*$$/d' benchmarks/apt-packages.txt) >/dev/null
	$(PY) -m pip install -q -e '.[bench]'

bench: bench-setup
	$(PY) benchmarks/fastpath.py
	$(PY) benchmarks/seed_table.py --plot seed_table.png

demo: setup
	$(VENV)/bin/dpdkeni lab demo

sdist: setup
	$(PY) -m pip install -q build && $(PY) -m build --sdist --outdir dist .

clean:
	rm -rf build dist *.egg-info dpdkeni/_native*.so dpdkeni/_native.c .pytest_cache
