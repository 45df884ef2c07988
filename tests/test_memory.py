"""seglab.utils.memory.tune_malloc and its use by the entry points (the page faults it saves are
measured by bench/malloc.py)."""

import pytest

import seglab.eval
import seglab.predict
import seglab.train
from seglab.utils.memory import tune_malloc


class Tuned(Exception):
    """Raised by the stand-in for tune_malloc: the entry point asked for tuning first."""


def test_tune_malloc_refuses_values_mallopt_cannot_take():
    with pytest.raises(ValueError, match="mmap_threshold_mb=4096"):
        tune_malloc(mmap_threshold_mb=4096)


@pytest.mark.parametrize(
    ("entry", "run", "name", "overrides"),
    [
        (seglab.train, seglab.train.train, "train", []),
        (seglab.eval, seglab.eval.evaluate, "eval", ["ckpt_path=missing.ckpt"]),
        (
            seglab.predict,
            seglab.predict.predict,
            "predict",
            ["ckpt_path=x.ckpt", "input=a", "output=b"],
        ),
    ],
    ids=["train", "eval", "predict"],
)
def test_entry_points_tune_malloc_by_default(compose_cfg, monkeypatch, entry, run, name, overrides):
    def tuned() -> bool:
        raise Tuned

    monkeypatch.setattr(entry, "tune_malloc", tuned)
    with pytest.raises(Tuned):
        run(compose_cfg(name, overrides=overrides, quick=False))
    if name != "train":  # train would go on to fit; these stop at the missing checkpoint
        with pytest.raises(Exception) as err:
            run(compose_cfg(name, overrides=[*overrides, "malloc_tuning=false"], quick=False))
        assert not isinstance(err.value, Tuned)
