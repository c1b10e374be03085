"""Knowledge distillation from the dense model during ADMM / masked retraining."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import admm_prune
from mobileprune.pipeline.train import train_epoch


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_distillation_loss_matches_hand_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loader = [(x, y)]
    opt = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: only the reported loss matters
    T, a = 3.0, 0.7
    got = train_epoch(student, loader, opt, teacher=teacher, distill=a, temperature=T, progress=False)
    s, t = student(x), teacher(x)
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    want = (1 - a) * nn.functional.cross_entropy(s, y) + a * T * T * kl
    assert got["loss"] == pytest.approx(float(want.detach()), rel=1e-5)


def test_distill_errors():
    m = nn.Linear(4, 3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="teacher"):
        train_epoch(m, [(torch.randn(2, 4), torch.tensor([0, 1]))], opt, distill=0.5, progress=False)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        train_epoch(m, [(torch.randn(2, 4), torch.tensor([0, 1]))], opt, teacher=m, distill=1.5,
                    progress=False)


def test_pipeline_with_distillation_keeps_teacher_and_resumes(tmp_path):
    torch.manual_seed(0)
    m = LeNet300100()
    dense = copy.deepcopy(m.state_dict())
    cfg = {"default": 0.9, "admm": {"epochs": 1, "distill": 0.5}, "retrain": {"epochs": 1, "distill": 0.5}}
    res = admm_prune(m, _loader(), cfg, run_dir=tmp_path / "run", log=lambda s: None)
    assert res.report["totals"]["all_targets_met"]
    teacher = torch.load(tmp_path / "run" / "teacher.pt", weights_only=True)["state_dict"]
    for k, v in dense.items():
        assert torch.equal(teacher[k], v)


def test_pipeline_distills_from_the_teacher_given(tmp_path):
    torch.manual_seed(0)
    dense = LeNet300100()
    start = copy.deepcopy(dense)
    with torch.no_grad():
        start.fc1.weight.mul_(0.5)  # e.g. an already pruned model: not the teacher
    cfg = {"default": 0.9, "admm": {"epochs": 0}, "retrain": {"epochs": 1, "distill": 0.5}}
    admm_prune(start, _loader(), cfg, run_dir=tmp_path / "run", teacher=dense, log=lambda s: None)
    saved = torch.load(tmp_path / "run" / "teacher.pt", weights_only=True)["state_dict"]
    for k, v in dense.state_dict().items():
        assert torch.equal(saved[k], v)


@pytest.mark.parametrize("shape", [(5, 2, 6, 7), (4, 3, 9)])
def test_random_shift_is_a_per_sample_translation(shape):
    from mobileprune.pipeline.train import random_shift

    x = torch.randn(*shape)
    s = 2
    got = random_shift(x, s, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    offs = [torch.randint(0, 2 * s + 1, (shape[0],), generator=g) for _ in shape[2:]]
    xp = nn.functional.pad(x, [s, s] * (len(shape) - 2), mode="replicate")
    for n in range(shape[0]):
        if len(shape) == 4:
            a, b = int(offs[0][n]), int(offs[1][n])
            want = xp[n, :, a:a + shape[2], b:b + shape[3]]
        else:
            a = int(offs[0][n])
            want = xp[n, :, a:a + shape[2]]
        assert torch.equal(got[n], want)
    assert random_shift(x, 0) is x
    with pytest.raises(ConfigError, match="max_shift"):
        random_shift(x, -1)


def test_shift_setting_validated():
    from mobileprune.pipeline.prune import PipelineConfig

    assert PipelineConfig.from_dict({"default": 0.5, "retrain": {"shift": 2}}).retrain.shift == 2
    with pytest.raises(ConfigError, match="retrain.shift"):
        PipelineConfig.from_dict({"default": 0.5, "retrain": {"shift": -1}})
