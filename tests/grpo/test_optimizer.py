"""The optimiser's share: SGD steps lr * g, AdamW's first step does not depend on the gradient's scale; the norms
one optimiser step reports, and the trainer's train/update_norm and train/update_to_grad_ratio."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.checks import ConfigError
from grpo.config import validate
from grpo.optimizer import build_optimizer, optimizer_step
from tests.conftest import compose_config


def params_with_grad(scale: float) -> list[torch.Tensor]:
    """Two parameters whose gradient is ``scale`` * (3, 4 | 0, 12): norm 13 * scale."""
    a = torch.zeros(2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a.grad = torch.tensor([3.0, 4.0]) * scale
    b.grad = torch.tensor([0.0, 12.0]) * scale
    return [a, b]


def make(name: str, params: list[torch.Tensor], lr: float = 0.1, momentum: float = 0.0):
    return build_optimizer(params, name, lr=lr, betas=(0.9, 0.999), weight_decay=0.0, momentum=momentum)


def test_sgd_update_is_lr_times_the_clipped_gradient():
    params = params_with_grad(1.0)
    norms = optimizer_step(make("sgd", params), params, grad_clip=0.0)
    assert norms.grad_norm == pytest.approx(13.0) and norms.clipped_norm == pytest.approx(13.0)
    assert norms.update_norm == pytest.approx(0.1 * 13.0, rel=1e-6)
    assert norms.update_to_grad == pytest.approx(0.1, rel=1e-6)
    assert params[0].tolist() == pytest.approx([-0.3, -0.4])
    clipped = params_with_grad(1.0)
    norms = optimizer_step(make("sgd", clipped), clipped, grad_clip=1.0)
    # clipped to norm 1 (clip_grad_norm_ scales by 1 / (13 + 1e-6)): the step is lr * 1
    assert norms.grad_norm == pytest.approx(13.0) and norms.clipped_norm == pytest.approx(1.0, rel=1e-6)
    assert norms.update_norm == pytest.approx(0.1, rel=1e-6)


def test_adamw_first_step_ignores_the_gradient_scale():
    """Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g) per coordinate: a 1000x smaller gradient
    moves the weights as far, so update/grad grows 1000x; SGD's ratio stays lr."""
    out = {}
    for scale in (1.0, 1e-3):
        params = params_with_grad(scale)
        out[scale] = optimizer_step(make("adamw", params, lr=0.01), params, grad_clip=0.0)
    # three non-zero coordinates, each moved by ~lr: sqrt(3) * 0.01
    for norms in out.values():
        assert norms.update_norm == pytest.approx(math.sqrt(3) * 0.01, rel=1e-4)
    assert out[1e-3].update_to_grad / out[1.0].update_to_grad == pytest.approx(1000.0, rel=1e-3)


def test_sgd_momentum_accumulates():
    params = params_with_grad(1.0)
    opt = make("sgd", params, momentum=0.5)
    optimizer_step(opt, params, grad_clip=0.0)
    for p, g in zip(params, params_with_grad(1.0), strict=True):
        p.grad = g.grad.clone()
    second = optimizer_step(opt, params, grad_clip=0.0)
    # buffer = 0.5 * g + g = 1.5 g: the second step is 1.5 * lr * 13
    assert second.update_norm == pytest.approx(1.5 * 0.1 * 13.0, rel=1e-6)


def test_unmeasured_update_is_nan_and_unknown_optimiser_is_refused():
    params = params_with_grad(1.0)
    assert math.isnan(optimizer_step(make("sgd", params), params, 1.0, measure_update=False).update_norm)
    with pytest.raises(ValueError, match="unknown optimiser 'adam'"):
        make("adam", params)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.name=adam", r"optim.name='adam' is not one of \['adamw', 'sgd'\]"),
        ("optim.momentum=1.0", r"optim.momentum must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_refuses_bad_optimiser_values(override, message):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose_config(override))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_trainer_logs_the_sgd_update_ratio(tmp_path, tiny_model_dir, math_jsonl):
    from tests.grpo.test_trainer import make_trainer

    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "optim.name=sgd", "optim.lr=0.05")
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    before = [p.detach().clone() for p in trainer.params]
    metrics = trainer.step(0)
    moved = math.sqrt(
        sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(trainer.params, before, strict=True))
    )
    assert metrics["train/update_norm"] == pytest.approx(moved, rel=1e-6)
    assert metrics["train/update_to_grad_ratio"] == pytest.approx(0.05, rel=1e-5)  # one step, no momentum
