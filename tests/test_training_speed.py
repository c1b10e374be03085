"""Fast CPU training (issue 21, item 1): bf16 autocast and channels_last change how the
forward pass computes, never what is stored: weights, gradients and masks stay float32,
pruned weights stay exactly zero, the model leaves an epoch in the standard layout, and
a bf16 loss is the fp32 loss up to bf16 rounding."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import ConfigError
from mobileprune.models import LeNet5
from mobileprune.pipeline import train as T
from mobileprune.sparsity.masks import MaskEnforcer, masks_from_weights


@pytest.fixture()
def fast():
    T.set_training_speed("bf16", True)
    yield
    T.set_training_speed("fp32", False)


def _data():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(64, 1, 28, 28, generator=g),
                                    torch.randint(0, 10, (64,), generator=g)), batch_size=16)


def test_masks_stay_exact_in_bf16_channels_last(fast):
    torch.manual_seed(0)
    m = LeNet5()
    with torch.no_grad():
        m.conv2.weight[m.conv2.weight.abs() < 0.02] = 0
        m.fc1.weight[:, ::2] = 0
    masks = masks_from_weights(m, ["conv2.weight", "fc1.weight"])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    MaskEnforcer(m, masks).attach(opt)
    before = m.conv1.weight.detach().clone()
    T.train_epoch(m, _data(), opt, progress=False)
    assert not torch.equal(before, m.conv1.weight)  # it trained
    for name, mask in masks.items():
        w = dict(m.named_parameters())[name]
        assert w.dtype == torch.float32 and w.is_contiguous()
        assert torch.equal(w.detach() != 0, mask)


def test_bf16_loss_is_the_fp32_loss_up_to_rounding(fast):
    torch.manual_seed(0)
    m = LeNet5()
    x, y = next(iter(_data()))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(m(x), y)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = T.training_loss(m, x.contiguous(memory_format=torch.channels_last), y)[0].float()
    assert abs(float(got) - float(ref)) <= 0.02 * float(ref)


def test_settings_are_validated_and_resolved():
    with pytest.raises(ConfigError, match="precision"):
        T.set_training_speed("fp16")
    with pytest.raises(ConfigError, match="channels_last"):
        T.set_training_speed("fp32", "yes")
    T.set_training_speed("auto", False)
    try:
        assert T.training_precision() == ("bf16" if T.bf16_supported() else "fp32")
    finally:
        T.set_training_speed("fp32", False)
    assert T.training_precision() == "fp32"


def test_bad_environment_settings_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(T._SPEED, "precision", "fp16")  # as $MOBILEPRUNE_PRECISION=fp16 sets it
    with pytest.raises(ConfigError, match="MOBILEPRUNE_PRECISION"):
        T.training_precision()
    monkeypatch.setenv("MOBILEPRUNE_PROGRESS_SECONDS", "soon")
    with pytest.raises(ConfigError, match="MOBILEPRUNE_PROGRESS_SECONDS"):
        T._env_seconds()


def _record_layouts(model: torch.nn.Module, seen: list) -> None:
    """Record, at every forward, whether conv2's weight and input are channels_last (not
    conv1's: with one input channel both layouts have the same strides)."""
    model.conv2.register_forward_hook(lambda mod, i, o: seen.append(
        all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
            for t in (mod.weight, i[0]))))


def test_the_teacher_runs_in_the_students_layout_and_is_restored():
    T.set_training_speed("fp32", True)
    try:
        torch.manual_seed(0)
        student, teacher = LeNet5(), LeNet5()
        seen: list = []
        _record_layouts(teacher, seen)
        opt = torch.optim.SGD(student.parameters(), lr=1e-2)
        T.train_epoch(student, _data(), opt, progress=False, teacher=teacher, distill=0.5)
    finally:
        T.set_training_speed("fp32", False)
    assert seen and all(seen)  # 4 batches, every teacher forward in channels_last
    for m in (student, teacher):
        assert all(p.is_contiguous() for p in m.parameters())


def test_evaluate_runs_in_the_layout_and_matches_a_plain_loop():
    torch.manual_seed(0)
    m = LeNet5()
    loader = _data()
    with torch.no_grad():
        expected = sum(int((m(x).argmax(1) == y).sum()) for x, y in loader) / 64
    seen: list = []
    _record_layouts(m, seen)
    T.set_training_speed("fp32", True)
    try:
        m.train()
        assert T.evaluate(m, loader) == expected
        assert m.training and all(p.is_contiguous() for p in m.parameters())
        assert seen and all(seen)
        bad = DataLoader(TensorDataset(torch.randn(4, 1, 28, 28), torch.randn(4)), batch_size=2)
        with pytest.raises(ConfigError, match="classification accuracy"):
            T.evaluate(m, bad)
        assert m.training and all(p.is_contiguous() for p in m.parameters())
        assert torch.is_grad_enabled()
    finally:
        T.set_training_speed("fp32", False)


class _ViewNet(torch.nn.Module):
    """A conv net that flattens with ``view`` (common in user code): it cannot run in
    channels_last, whose strides ``view`` cannot merge."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 5)
        self.fc = torch.nn.Linear(4 * 24 * 24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


def test_a_model_that_cannot_run_channels_last_trains_in_the_standard_layout():
    T.set_training_speed("fp32", "auto")
    torch.manual_seed(0)
    m, ref = _ViewNet(), _ViewNet()
    ref.load_state_dict(m.state_dict())
    with pytest.warns(UserWarning, match="does not run in channels_last"):
        acc = T.evaluate(m, _data())
    with torch.no_grad():
        assert acc == sum(int((ref(x).argmax(1) == y).sum()) for x, y in _data()) / 64
    for net in (m, ref):  # the same epoch in the standard layout, by hand for ref
        opt = torch.optim.SGD(net.parameters(), lr=1e-2)
        if net is m:
            with pytest.warns(UserWarning, match="view"):
                T.train_epoch(m, _data(), opt, progress=False)
        else:
            for x, y in _data():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6) and a.is_contiguous()
    assert m.training
