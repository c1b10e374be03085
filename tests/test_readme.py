"""README.md's code examples keep working against the current API.

Users copy the README's snippets, and API drift in the docs is a common complaint about
pruning libraries. This file guards that drift:

* every ```python block of README.md is parsed out of the file at test time (never
  copied here) and executed with ``exec`` in a fresh namespace. A single shared
  preamble (:func:`_preamble`) defines what the snippets use but do not define
  (``model``, ``loader``, ``criterion``, ``opt``, ``x_numpy_float32``...), small enough
  that each block runs in seconds. Each block runs in its own temporary working
  directory, so files such as ``lenet5.mps`` or ``runs/my-model`` land there;
* after a block, a cheap check of what the block promises runs (:data:`CHECKS`,
  selected by the API the block calls): masks hold, targets are met, the torch-free
  runtime agrees with PyTorch...;
* the pruning-config and proximal-config ```yaml blocks parse with ``yaml.safe_load``
  and pass the library's own validation against a model that has the layers they name
  (no training).

If a test here fails after an API change, fix the README (or the API), not the test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    """The bodies of README.md's fenced blocks of language ``lang``, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def _block_id(i: int, block: str) -> str:
    first = next((ln.strip() for ln in block.splitlines() if ln.strip()), "")
    return f"{i}-" + re.sub(r"\W+", "_", first).strip("_")[:60]


PY_BLOCKS = _blocks("python")
YAML_BLOCKS = _blocks("yaml")


# ----------------------------------------------------------------------------- preamble
def _preamble() -> dict[str, Any]:
    """A fresh namespace with what the README's snippets assume but do not define.

    ``model`` is the Caffe LeNet-5 (it has the ``conv1`` and ``fc1`` layers the ADMM
    snippet's config names); the loaders hold 2 batches of 8 random 1x28x28 images,
    so that even the one-call pipeline's literal ``"epochs": 10`` runs in seconds.
    """
    from mobileprune.models.lenet import LeNet5

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    model = LeNet5()
    return {
        "__name__": "readme_snippet",
        "torch": torch,
        "np": np,
        "model": model,
        "loader": loader,
        "train_loader": loader,
        "test_loader": loader,
        "criterion": nn.CrossEntropyLoss(),
        "opt": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        "admm_epochs": 1,
        "retrain_epochs": 1,
        "x_numpy_float32": np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32),
    }


# ------------------------------------------------------------------- post-conditions
def _check_admm_pruner(ns: dict[str, Any]) -> None:
    """ADMMPruner + MaskEnforcer: masked mapping left every layer within its target and
    the weights are exactly 0.0 wherever the mask is 0."""
    model, masks, pruner = ns["model"], ns["masks"], ns["pruner"]
    params = dict(model.named_parameters())
    assert masks and {t.param_name for t in pruner.targets} <= set(masks)
    for name, mask in masks.items():
        w = params[name].detach()
        assert torch.all(w[~mask.bool()] == 0.0), name
    for t in pruner.targets:
        assert t.count(params[t.param_name].detach()) <= t.keep, t.name


def _check_admm_prune(ns: dict[str, Any]) -> None:
    """admm_prune: a report with totals, every layer meets the last stage's target, and
    the run directory was written (relative to the working directory)."""
    result = ns["result"]
    assert "totals" in result.report
    assert result.report["totals"]["all_targets_met"] is True
    assert result.masks
    assert Path("runs/my-model").is_dir()


def _check_proximal(ns: dict[str, Any]) -> None:
    """ProximalPruner: one prox step per batch, which pruned weights; masks() marks
    exactly the nonzero weights of the regularised layers."""
    model, pruner, loader = ns["model"], ns["pruner"], ns["loader"]
    params = dict(model.named_parameters())
    assert pruner.steps == len(loader)
    masks = pruner.masks()
    assert set(masks) == set(pruner.regularizers)
    for name, mask in masks.items():
        assert torch.equal(mask, params[name].detach() != 0), name
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) < total


def _check_runtime(ns: dict[str, Any]) -> None:
    """Sparse file + torch-free runtime: the ``out=`` call equals the plain call, and
    both match the PyTorch model."""
    model, net, x, buf = ns["model"], ns["net"], ns["x_numpy_float32"], ns["buf"]
    assert Path("lenet5.mps").is_file()
    y = np.array(net(x), copy=True)
    np.testing.assert_array_equal(buf, y)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert buf.shape == ref.shape
    err = float(np.abs(buf - ref).max())
    assert err <= 1e-4 * float(np.abs(ref).max()), err


def _check_eye_tracker(ns: dict[str, Any]) -> None:
    """Eye tracking: the four-input sparse file (format version 3) gives the PyTorch
    model's output, and masked mapping met the Table 5 budget exactly."""
    from mobileprune.runtime import read_container

    model, y = ns["model"], ns["y"]
    assert read_container("itracker.mps")[0]["format_version"] == 3  # the engine's format
    with torch.no_grad():
        ref = model.eval()(ns["face"], ns["left"], ns["right"], ns["grid"]).numpy()
    assert y.shape == ref.shape == (8, 2)
    assert float(np.abs(y - ref).max()) <= 1e-4 * float(np.abs(ref).max())
    params = dict(model.named_parameters())
    for t in ns["pruner"].targets:
        assert t.count(params[t.param_name].detach()) == t.keep, t.name


# Keyed by a call the block makes: a block that makes it gets the check.
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ADMMPruner(": _check_admm_pruner,
    "admm_prune(": _check_admm_prune,
    "ProximalPruner(": _check_proximal,
    'runtime.load("lenet5.mps")': _check_runtime,
    "ITrackerMobile(": _check_eye_tracker,
}


# ------------------------------------------------------------------------------ tests
def test_readme_has_the_blocks():
    """The extraction finds the README's blocks, and every check still applies to one
    (a renamed call must not silently turn a check off)."""
    assert PY_BLOCKS and YAML_BLOCKS
    for key in CHECKS:
        assert any(key in b for b in PY_BLOCKS), f"no README python block calls {key!r}"


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[_block_id(i, b) for i, b in enumerate(PY_BLOCKS)])
def test_python_block(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ns = _preamble()
    exec(compile(block, f"README.md python block {block.splitlines()[0]!r}", "exec"), ns)
    for key, check in CHECKS.items():
        if key in block:
            check(ns)


def _yaml_block(marker: str) -> str:
    found = [b for b in YAML_BLOCKS if re.search(marker, b, flags=re.M)]
    assert found, f"no README yaml block matching {marker!r}"
    return found[0]


def _same_under_library_loader(block: str, tmp_path: Path) -> Any:
    """yaml.safe_load and the library's YAML reader (the CLI's) agree on the block."""
    from mobileprune.sparsity.targets import load_yaml

    raw = yaml.safe_load(block)
    path = tmp_path / "config.yaml"
    path.write_text(block)
    assert load_yaml(path) == raw
    return raw


class _ConfigModel(nn.Module):
    """conv1..conv4 and fc1..fc3: the layer names of the README's pruning config, with one
    conv (conv4) only its regex selects and one Linear (fc3) only its type entry selects."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 32, 3)
        self.conv3 = nn.Conv2d(32, 48, 3)
        self.conv4 = nn.Conv2d(48, 16, 3)
        self.fc1 = nn.Linear(16 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def test_yaml_pruning_config(tmp_path: Path) -> None:
    """The pruning-config block is a valid pipeline config whose targets resolve."""
    from mobileprune.pipeline.prune import PipelineConfig
    from mobileprune.sparsity.targets import resolve_targets

    raw = _same_under_library_loader(_yaml_block(r"^default:[\s\S]*^layers:"), tmp_path)
    cfg = PipelineConfig.from_dict(raw)
    model = _ConfigModel()
    targets = [t for stage in cfg.stages for t in resolve_targets(model, stage)]
    names = {t.name for t in targets}
    for name in raw.get("exclude", []):
        assert name not in names
    for key, spec in raw["layers"].items():
        if key in dict(model.named_modules()):
            assert key in names
            specs = spec if isinstance(spec, list) else [spec]
            structures = {s.get("structure", "unstructured") if isinstance(s, dict) else "unstructured"
                          for s in specs}
            assert {t.structure for t in targets if t.name == key} == structures, key
    # the pattern entries select what no exact name claims: conv4 by regex, fc3 by type
    by_name = {t.name: t for t in targets}
    for name, key in (("conv4", "re:conv[4-9]"), ("fc3", "type:Linear")):
        n = getattr(model, name).weight.numel()
        keep = by_name[name].keep  # the largest count whose sparsity reaches the target
        assert keep / n <= 1 - raw["layers"][key] < (keep + 1) / n, name


def test_yaml_proximal_config(tmp_path: Path) -> None:
    """The proximal-config block passes proximal_prune's validation (the schedule and
    the ProximalPruner spec) on LeNet-300-100, whose fc3 it names."""
    from mobileprune.models.lenet import LeNet300100
    from mobileprune.sparsity.proximal import ProximalPruner
    from mobileprune.pipeline.prune import split_prox_config

    raw = _same_under_library_loader(_yaml_block(r"^method:\s*l0_group_lasso"), tmp_path)
    pruner_cfg, sched = split_prox_config(raw)
    assert sched.rounds == raw["schedule"]["rounds"]
    pruner = ProximalPruner(LeNet300100(), pruner_cfg)
    for layer, spec in raw.get("layers", {}).items():
        reg = pruner.regularizers[f"{layer}.weight"]
        for key, value in spec.items():
            assert getattr(reg, key) == value, (layer, key)
