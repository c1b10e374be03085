"""mobileprune.pipeline.heap: glibc keeps a training loop's freed tensors (issue 21)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from mobileprune.errors import ConfigError
from mobileprune.pipeline import heap, train
from mobileprune.pipeline.train import set_training_speed, train_epoch


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(heap, "_done", [])


def test_settings_are_applied_once_in_order(fresh):
    calls = []
    rec = lambda p, v: calls.append((p, v)) or 1  # noqa: E731
    assert heap.keep_freed_memory(rec) is True
    assert calls == [(-3, 32 << 20), (-1, 2 ** 31 - 1), (-2, 64 << 20)]
    assert heap.keep_freed_memory(rec) is True and len(calls) == 3  # once per process


def test_a_refused_setting_or_another_libc_reports_false(fresh, monkeypatch):
    assert heap.keep_freed_memory(lambda p, v: int(p != -1)) is False
    monkeypatch.setattr(heap, "_done", [])
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert heap.keep_freed_memory() is False


def _loader():
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=8)


@pytest.mark.parametrize("mode, applied", [("keep", True), ("system", False)])
def test_training_applies_the_heap_mode(fresh, monkeypatch, mode, applied):
    calls = []
    monkeypatch.setattr(heap, "_glibc", lambda: (lambda p, v: calls.append(p) or 1))
    monkeypatch.setitem(train._SPEED, "heap", mode)
    model = torch.nn.Linear(4, 2)
    train_epoch(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    assert bool(calls) is applied


def test_bad_heap_modes_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="heap must be one of keep, system"):
        set_training_speed(heap="off")
    monkeypatch.setitem(train._SPEED, "heap", "bogus")
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="MOBILEPRUNE_HEAP must be one of keep, system, got 'bogus'"):
        train_epoch(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), progress=False)


_FAULTS = """
import ctypes, resource, sys
from mobileprune.pipeline.heap import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # three 24 MiB blocks written, then freed: a training step's activations
    ps = [libc.malloc(24 << 20) for _ in range(3)]
    for p in ps:
        ctypes.memset(p, 1, 24 << 20)
    for p in ps:
        libc.free(p)
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the heap settings act on glibc only")
def test_kept_memory_is_not_faulted_in_again():
    """The effect itself, in fresh processes (glibc's own malloc: torch's allocator adds
    huge-page advice whose faults vary from run to run): after the first step, glibc's
    defaults give the freed pages back and every later step faults them in again; kept,
    the later steps fault nothing in."""
    faults = {m: int(subprocess.run([sys.executable, "-c", _FAULTS, m], capture_output=True,
                                    text=True, check=True).stdout) for m in ("keep", "system")}
    assert faults["system"] > 10 * 3 * 6144 // 2, faults  # 24 MiB = 6144 pages of 4 KiB
    assert faults["keep"] < 100, faults
