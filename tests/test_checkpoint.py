"""Tests of mobileprune.checkpoint: safe format, validation, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mobileprune.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    atomic_write,
    atomic_write_text,
    check_architecture,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)
from mobileprune.errors import CheckpointError
from mobileprune.models import LeNet5, LeNet300100


def pruned_lenet300100(seed=0):
    torch.manual_seed(seed)
    model = LeNet300100(in_features=49)  # 7x7 inputs: a small file
    masks = {}
    with torch.no_grad():
        for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
            p = dict(model.named_parameters())[name]
            masks[name] = torch.rand(p.shape) < 0.1
            p.mul_(masks[name])
    return model, masks


def save_example(path, **kw):
    model, masks = pruned_lenet300100()
    args = dict(kind="pruned", model_name="lenet300100", model_kwargs={"in_features": 49},
                masks=masks, config={"default": 0.9, "layers": {"fc3": {"keep": 5}}},
                metrics={"accuracy_after": 0.97, "note": "x"}, extra={"history": [1, 2]})
    args.update(kw)
    save_checkpoint(path, model, **args)
    return model, masks


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "model.pt"  # parent directory is created
    model, masks = save_example(path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["kind"] == "pruned"
    assert ckpt["model"] == {"name": "lenet300100", "kwargs": {"in_features": 49}}
    assert ckpt["config"] == {"default": 0.9, "layers": {"fc3": {"keep": 5}}}
    assert ckpt["metrics"] == {"accuracy_after": 0.97, "note": "x"}
    assert ckpt["extra"] == {"history": [1, 2]}
    assert ckpt["architecture"]["fc1.weight"] == [300, 49]
    assert set(ckpt["masks"]) == set(masks)
    for k, m in masks.items():
        assert ckpt["masks"][k].dtype == torch.bool
        assert torch.equal(ckpt["masks"][k], m)
    # rebuilt from the zoo with its kwargs
    rebuilt = restore_model(ckpt)
    assert isinstance(rebuilt, LeNet300100)
    assert rebuilt.fc1.in_features == 49
    sd = model.state_dict()
    assert rebuilt.state_dict().keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(rebuilt.state_dict()[k], v)
    # or into a given instance
    target = LeNet300100(in_features=49)
    assert restore_model(ckpt, target) is target
    assert torch.equal(target.fc2.weight, model.fc2.weight)


def test_loads_with_plain_torch_load_weights_only(tmp_path):
    path = tmp_path / "m.pt"
    model, masks = save_example(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT
    assert torch.equal(raw["state_dict"]["fc1.weight"], model.fc1.weight.detach())
    assert torch.equal(raw["masks"]["fc2.weight"], masks["fc2.weight"])
    # a plain user can restore it without mobileprune's loader
    m = LeNet300100(in_features=49)
    m.load_state_dict(raw["state_dict"])
    assert torch.equal(m.fc3.weight, model.fc3.weight)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    g = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist()))
    with pytest.raises(CheckpointError, match="corrupt, truncated") as info:
        load_checkpoint(path)
    assert "corrupt.pt" in str(info.value)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.pt"
    save_example(good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated") as info:
        load_checkpoint(bad)
    assert "truncated.pt" in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_plain_state_dict_is_foreign(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(LeNet5().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a mobileprune checkpoint") as info:
        load_checkpoint(path)
    assert "load_state_dict" in str(info.value)  # tells the user what to do instead


def test_pickled_object_is_rejected_by_weights_only(tmp_path):
    path = tmp_path / "module.pt"
    torch.save({"format": FORMAT, "format_version": 1, "model": nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as info:
        load_checkpoint(path)
    msg = str(info.value)
    # names the object and says what to save instead, in one line
    assert "torch.nn.modules.linear.Linear" in msg and "state_dict()" in msg and "\n" not in msg


@pytest.mark.parametrize("make", [
    lambda p: torch.save(nn.Linear(2, 2), p),                     # torch.save(model)
    lambda p: p.write_bytes(b"\x80\x02garbage" + bytes(range(256))),  # not a checkpoint
    lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64),           # a broken zip
])
def test_load_failures_read_as_one_clean_line(tmp_path, make):
    """torch's own message (several lines, terminal escape codes, and the advice to load
    with weights_only=False, which would run code from an untrusted file) is not passed on."""
    path = tmp_path / "x.pt"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"cannot read checkpoint {path}: ")
    assert "\n" not in msg and "\x1b" not in msg and "weights_only=False" not in msg
    assert "weights_only` set to `False" not in msg


def test_wrong_format_version_and_damaged_fields(tmp_path):
    path = tmp_path / "m.pt"
    save_example(path)
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    raw["format_version"] = FORMAT_VERSION
    del raw["masks"]
    torch.save(raw, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="'masks' missing"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_other_architecture(tmp_path):
    path = tmp_path / "fc.pt"
    save_checkpoint(path, LeNet300100(), model_name="lenet300100")
    ckpt = load_checkpoint(path)
    target = LeNet5()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="different architecture than LeNet5") as info:
        restore_model(ckpt, target)
    msg = str(info.value)
    assert "fc3.weight" in msg or "conv1.weight" in msg
    # nothing was copied into the model
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])


def test_same_keys_different_shapes(tmp_path):
    path = tmp_path / "m.pt"
    save_example(path)  # in_features=49
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc1.weight \(300, 49\) vs \(300, 784\)"):
        restore_model(load_checkpoint(path), LeNet300100())


def test_custom_model_needs_instance(tmp_path):
    path = tmp_path / "custom.pt"
    model = nn.Sequential(nn.Linear(3, 2))
    save_checkpoint(path, model)
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="custom model"):
        restore_model(ckpt)
    m2 = nn.Sequential(nn.Linear(3, 2))
    restore_model(ckpt, m2)
    assert torch.equal(m2[0].weight, model[0].weight)
    check_architecture(ckpt, m2)  # no error


def test_invalid_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2), kind="weird")
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------ atomic writes


def _listing(d):
    return sorted(os.listdir(d))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_previous_file(tmp_path, exc):
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous content")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new con")
        raise exc("disk full")

    with pytest.raises(exc, match="disk full"):
        atomic_write(path, write)
    assert path.read_bytes() == b"previous content"
    assert _listing(tmp_path) == ["out.bin"], "temporary file left behind"


def test_save_checkpoint_failing_midway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model, _ = save_example(path)
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        with open(f, "r+b") as fh:  # leave a half-written file, then fail
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError("interrupted")

    monkeypatch.setattr(torch, "save", broken_save)
    other = LeNet300100(in_features=49)
    with pytest.raises(OSError, match="interrupted"):
        save_checkpoint(path, other, model_name="lenet300100", model_kwargs={"in_features": 49})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["ckpt.pt"]
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["fc1.weight"], model.fc1.weight.detach())


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert _listing(tmp_path) == ["a.txt"]


def test_save_overwrites_previous_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, nn.Linear(2, 2), metrics={"v": 1})
    save_checkpoint(path, nn.Linear(2, 2), metrics={"v": 2})
    assert load_checkpoint(path)["metrics"] == {"v": 2}
    assert _listing(tmp_path) == ["c.pt"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.md", "x")
        (tmp_path / "plain.md").write_text("x")
    finally:
        os.umask(old)
    plain_mode = (tmp_path / "plain.md").stat().st_mode & 0o777
    assert (tmp_path / "r.md").stat().st_mode & 0o777 == plain_mode
