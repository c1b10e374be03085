"""Keep a training loop's freed tensors in the process heap (glibc only).

A CPU training step allocates and frees the same large tensors every step: activations,
their gradients, im2col buffers. glibc serves every block above its mmap threshold
(128 KiB at start, raised as it sees frees, at most 32 MiB) with a fresh ``mmap`` and
gives it back to the kernel with ``munmap`` when freed, and trims the top of the heap
whenever 128 KiB lie free there; the next step then takes a page fault for every 4 KiB
it touches again. Measured on the FER-2013 CNN (one thread, 4,200 images, one ADMM and
one retraining epoch with distillation): 65 of 297 s were kernel time; with the settings
below 19 of 251 s (``docs/benchmarks/training_speed_before_after.md``).

:func:`keep_freed_memory` sets, once per process, through glibc's ``mallopt``: the mmap
threshold to its maximum (32 MiB: blocks below it come from the heap and stay there when
freed), no trimming of the heap top, and a 64 MiB pad on each heap growth. The process
then keeps its peak training memory until it exits instead of returning it between
steps. Blocks above 32 MiB still come from ``mmap``. Nothing is done where the C library
is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import platform

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: the values set: the largest mmap threshold glibc accepts on 64-bit, trimming off
#: (the largest int), 64 MiB of heap growth at a time
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 64 << 20))

_done: list[bool] = []


def _glibc():
    """glibc's ``mallopt`` through ctypes, or ``None`` where the C library is another."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory(mallopt=None) -> bool:
    """Apply :data:`SETTINGS` once per process; ``True`` when glibc took every one of
    them (later calls return the first call's answer). ``mallopt``: the function to call
    (default: glibc's; tests pass a recorder)."""
    if _done:
        return _done[0]
    fn = mallopt if mallopt is not None else _glibc()
    ok = fn is not None and all(fn(param, value) == 1 for param, value in SETTINGS)
    _done.append(ok)
    return ok
