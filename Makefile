# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench-lenet5

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,runtime,export,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mobileprune demo

test: $(STAMP)
	$(PY) -m pytest -q

bench-lenet5: $(STAMP)
	$(PY) benchmarks/lenet5_admm.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Native engine (src/mobileprune/runtime/native): its C tests and the model-file fuzzer
# under ASan + UBSan (tests/native/Makefile); arm64: installs gcc-aarch64-linux-gnu and
# qemu-user with apt-get when missing, cross-builds, runs the tests under qemu-aarch64.
.PHONY: native-check cross-test
native-check:
	$(MAKE) -C tests/native check

cross-test: $(STAMP)
	PYTHON=$(PY) scripts/cross_test.sh
