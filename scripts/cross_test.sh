#!/usr/bin/env bash
# Cross-build the native engine for arm64 (aarch64) and test it under qemu-user.
#
#   scripts/cross_test.sh            install the tools if missing, cross-build the library and
#                                    mobileprune_run with CMake (-Werror), run the C tests and
#                                    the fuzzer under qemu-aarch64, then the torch comparisons
#                                    of tests/test_native_cross.py
#   scripts/cross_test.sh --install  only install the cross tools (gcc-aarch64-linux-gnu,
#                                    g++-aarch64-linux-gnu, qemu-user) when missing
#
# Environment: PYTHON (default: .venv/bin/python, else python3), BUILD_DIR (default
# build/cross-aarch64), CROSS_CC (default aarch64-linux-gnu-gcc), FUZZ_ITERS (default 2000:
# qemu is slow; the host run of `make native-check` fuzzes longer).
set -euo pipefail
cd "$(dirname "$0")/.."

CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64}
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
BUILD_DIR=${BUILD_DIR:-build/cross-aarch64}
PACKAGES="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user"

have_tools() { command -v "$CROSS_CC" >/dev/null 2>&1 && command -v "$QEMU" >/dev/null 2>&1; }

install_tools() {
  have_tools && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "cross_test: $CROSS_CC / $QEMU missing and no apt-get: install $PACKAGES" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
    else echo "cross_test: not root: run 'sudo apt-get install -y $PACKAGES'" >&2; return 1; fi
  fi
  echo "cross_test: installing $PACKAGES"
  export DEBIAN_FRONTEND=noninteractive
  $sudo timeout 600 apt-get update -q </dev/null &&
    $sudo timeout 1200 apt-get install -y -q --no-install-recommends $PACKAGES </dev/null || {
      echo "cross_test: apt-get failed (offline?); the cross tests will be skipped" >&2
      return 1
    }
  have_tools || { echo "cross_test: $CROSS_CC / $QEMU still missing after installing $PACKAGES" >&2; return 1; }
}

if [ "${1:-}" = "--install" ]; then
  install_tools
  exit $?
fi
install_tools

# 1. the library and mobileprune_run, as a user builds them (CMake, -Werror)
if command -v cmake >/dev/null 2>&1; then
  cmake -S src/mobileprune/runtime/native -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_C_COMPILER="$CROSS_CC" \
    -DMOBILEPRUNE_WERROR=ON >/dev/null
  cmake --build "$BUILD_DIR" -j 2
  file "$BUILD_DIR/mobileprune_run" 2>/dev/null || true
  "$QEMU" -L "$SYSROOT" "$BUILD_DIR/mobileprune_run" --help >/dev/null
  echo "cross_test: CMake arm64 build ok ($BUILD_DIR)"
else
  echo "cross_test: cmake not found: skipping the CMake build (the C tests below still cross-build)"
fi

# 2. the C tests and the fuzzer, cross-built with ASan + UBSan, under qemu
make -C tests/native check CC="$CROSS_CC" FUZZ_ITERS="${FUZZ_ITERS:-2000}" FUZZ_BUDGET="${FUZZ_BUDGET:-60}"

# 3. whole models against torch (mobileprune_run under qemu)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
MOBILEPRUNE_REQUIRE_CROSS=1 "$PYTHON" -m pytest -q -rs tests/test_native_cross.py
