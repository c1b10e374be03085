# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench-lenet5 native peers

# the native engine (C, loaded by mobileprune.runtime with ctypes): `pip install -e .`
# builds it; a change to a .c/.h/.inc file rebuilds it in place before the demo / tests
NATIVE_DIR := src/mobileprune/runtime/native
NATIVE_DEPS := $(shell find $(NATIVE_DIR) -name '*.c' -o -name '*.h' -o -name '*.inc' 2>/dev/null)
NATIVE_STAMP := $(VENV)/.native-built

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,runtime,export,bench]'
	$(PIP) install -q --no-deps -c constraints.txt torchvision timm  # extra 'zoo' (see pyproject)
	$(PIP) install -q --no-deps -c constraints.txt torch-pruning  # extra 'peers' (see pyproject)
	touch $(STAMP)

venv: $(STAMP)

$(NATIVE_STAMP): $(STAMP) setup.py $(NATIVE_DEPS)
	$(PY) -c 'import setuptools' 2>/dev/null || $(PIP) install -q 'setuptools>=68'
	$(PY) setup.py -q build_ext --inplace
	touch $(NATIVE_STAMP)

native: $(NATIVE_STAMP)

demo: $(STAMP) $(NATIVE_STAMP)
	$(VENV)/bin/mobileprune demo

test: $(STAMP) $(NATIVE_STAMP)
	$(PY) -m pytest -q

# peer engines for benchmarks/engines.py, apart from .venv (DeepSparse 1.8 needs onnx < 1.15
# and numpy 1.x): OpenVINO and DeepSparse in .venv-peers
peers:
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q 'deepsparse==1.8.0' 'numpy<2' 'openvino==2026.4.1'

bench-lenet5: $(STAMP)
	$(PY) benchmarks/lenet5_admm.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/mobileprune/runtime/_mpnative*.so

# Native engine (src/mobileprune/runtime/native): its C tests and the model-file fuzzer
# under ASan + UBSan (tests/native/Makefile); arm64: installs gcc-aarch64-linux-gnu and
# qemu-user with apt-get when missing, cross-builds, runs the tests under qemu-aarch64.
.PHONY: native-check cross-test
native-check:
	$(MAKE) -C tests/native check

cross-test: $(STAMP)
	PYTHON=$(PY) scripts/cross_test.sh
