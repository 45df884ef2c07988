"""Linear LR warm-up on top of the configured schedule (``scheduler.warmup_iters``)."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, PolynomialLR

from seglab.tasks.optim import configure_optimizers

STEPS = 20


def module(steps: int = STEPS) -> SimpleNamespace:
    weight = nn.Parameter(torch.zeros(2))
    return SimpleNamespace(
        parameters=lambda: [weight],
        trainer=SimpleNamespace(estimated_stepping_batches=steps),
    )


def learning_rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def build(**warmup):
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    sched = functools.partial(PolynomialLR, power=0.9, total_iters=None, **warmup)
    out = configure_optimizers(module(), opt, sched)
    return out["optimizer"], out["lr_scheduler"]["scheduler"]


def test_warmup_multiplies_the_poly_schedule():
    optimizer, scheduler = build(warmup_iters=5, warmup_factor=0.01)
    assert isinstance(scheduler, ChainedScheduler)
    got = learning_rates(scheduler, optimizer, STEPS)
    expected = [0.1 * (0.01 + 0.99 * min(t, 5) / 5) * (1 - t / STEPS) ** 0.9 for t in range(STEPS)]
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[0] == pytest.approx(0.001)
    assert max(got) == pytest.approx(got[5])  # the peak is where the warm-up ends


def test_warmup_with_cosine():
    opt = functools.partial(torch.optim.Adam, lr=0.01)
    sched = functools.partial(
        CosineAnnealingLR, T_max=None, eta_min=0.0, warmup_iters=4, warmup_factor=0.1
    )
    out = configure_optimizers(module(), opt, sched)
    got = learning_rates(out["lr_scheduler"]["scheduler"], out["optimizer"], STEPS)

    expected = [
        0.01 * (0.1 + 0.9 * min(t, 4) / 4) * (1 + math.cos(math.pi * t / STEPS)) / 2
        for t in range(STEPS)
    ]
    assert got == pytest.approx(expected, rel=1e-5)


def test_no_warmup_leaves_the_schedule_alone():
    optimizer, scheduler = build(warmup_iters=0, warmup_factor=0.001)
    assert isinstance(scheduler, PolynomialLR) and scheduler.total_iters == STEPS
    assert learning_rates(scheduler, optimizer, 3)[0] == pytest.approx(0.1)


def test_warmup_resumes_from_state_dicts():
    optimizer, scheduler = build(warmup_iters=8, warmup_factor=0.001)
    whole = learning_rates(scheduler, optimizer, STEPS)
    optimizer, scheduler = build(warmup_iters=8, warmup_factor=0.001)
    first = learning_rates(scheduler, optimizer, 6)
    states = (optimizer.state_dict(), scheduler.state_dict())
    optimizer, scheduler = build(warmup_iters=8, warmup_factor=0.001)
    optimizer.load_state_dict(states[0])
    scheduler.load_state_dict(states[1])
    rest = learning_rates(scheduler, optimizer, STEPS - 6)
    assert first + rest == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize(
    "warmup, key",
    [
        ({"warmup_iters": -1}, "scheduler.warmup_iters=-1"),
        ({"warmup_iters": 2.5}, "scheduler.warmup_iters=2.5"),
        ({"warmup_iters": True}, "scheduler.warmup_iters=True"),
        ({"warmup_iters": 5, "warmup_factor": 0}, "scheduler.warmup_factor=0"),
        ({"warmup_iters": 5, "warmup_factor": 1.5}, "scheduler.warmup_factor=1.5"),
        ({"warmup_iters": 5, "warmup_factor": "x"}, "scheduler.warmup_factor='x'"),
    ],
)
def test_bad_warmup_settings_are_named(warmup, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        build(**warmup)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return configure_optimizers(
            self,
            functools.partial(torch.optim.SGD, lr=0.5),
            functools.partial(
                PolynomialLR, power=1.0, total_iters=None, warmup_iters=3, warmup_factor=0.1
            ),
        )


def test_lightning_steps_the_chained_schedule_every_iteration(tmp_path):
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.ones(6, 2)), batch_size=1
    )
    model = Tiny()
    L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, data)
    expected = [0.5 * (0.1 + 0.9 * min(t, 3) / 3) * (1 - t / 6) for t in range(6)]
    assert model.seen == pytest.approx(expected, rel=1e-6)
