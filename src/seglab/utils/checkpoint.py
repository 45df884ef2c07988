"""Rebuilding a run's config and weights from what a checkpoint carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf

from seglab.callbacks.config import CONFIG_KEY
from seglab.utils.config import upgrade_data_config
from seglab.utils.io import load_checkpoint
from seglab.utils.safe_load import TRUST_KEY, check_config_targets

__all__ = ["check_model_fits_data", "config_from_checkpoint", "load_weights"]

# (model key, data key) pairs that must agree for a network to run on a dataset
_MUST_AGREE = (
    ("model.task", "data.task"),
    ("model.num_classes", "data.num_classes"),
    ("model.net.num_classes", "data.num_classes"),
    ("model.net.in_channels", "data.in_channels"),
)


def config_from_checkpoint(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """Merge the config saved in ``cfg.ckpt_path`` with the groups chosen on the command line.

    ``model`` and ``data`` come from the checkpoint unless ``cfg`` sets them (``data=camvid`` on
    the command line evaluates on another dataset, for example); ``+data.KEY=VALUE`` without
    ``data=NAME`` (a node without ``_target_``) changes keys of the checkpoint's own; everything
    else comes from ``cfg``. The saved ``data`` is upgraded to today's keys (``upgrade_data_config``). Returns
    the merged config and the loaded checkpoint.

    The file is read as data only and its config may only name the ``_target_`` classes of the
    project's ``conf/`` tree, unless ``cfg.trust_checkpoint`` (``seglab.utils.safe_load``).

    Raises:
        ValueError / FileNotFoundError / IsADirectoryError: naming ``ckpt_path`` when it is
            unset or not a readable seglab checkpoint, or when the chosen ``data`` cannot feed
            the checkpoint's model (see ``check_model_fits_data``).
        UntrustedFileError: when the file holds code or objects that are not plain data, and
            ``trust_checkpoint`` is not set.
    """
    ckpt_path = OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False)
    if not ckpt_path:
        raise ValueError(
            f"ckpt_path={ckpt_path!r}: required; expected ckpt_path=PATH/TO/FILE.ckpt "
            "(a checkpoint written by seglab's train)"
        )
    trust = bool(cfg.get(TRUST_KEY, False))
    checkpoint = load_checkpoint(ckpt_path, trust=trust)
    saved = checkpoint.get(CONFIG_KEY)
    if saved is None and (cfg.get("model") is None or cfg.get("data") is None):
        raise ValueError(
            f"ckpt_path={ckpt_path!r} carries no seglab config (not written by "
            "seglab's train): choose model=... and data=... on the command line"
        )
    # a chosen node without _target_ (+data.KEY=VALUE, no data=NAME) changes the saved one's keys
    edits = {
        k: cfg[k] for k in ("model", "data") if cfg.get(k) is not None and "_target_" not in cfg[k]
    }
    chosen = {k: cfg[k] for k in ("model", "data") if cfg.get(k) is not None and k not in edits}
    if isinstance(saved, dict):  # what is built from it must be seglab's own classes
        used = {k: v for k, v in saved.items() if k not in chosen}
        check_config_targets(used, f"ckpt_path={str(ckpt_path)!r}", trust=trust)
    base = OmegaConf.create(saved or {})
    if base.get("data") is not None:
        upgrade_data_config(base.data)  # weight_map: true / false of older checkpoints
    for key, node in edits.items():
        if base.get(key) is None:
            raise ValueError(
                f"ckpt_path={ckpt_path!r} carries no {key} config to change with "
                f"+{key}.KEY=VALUE: choose {key}=NAME on the command line"
            )
        base[key] = OmegaConf.merge(base[key], node)
    merged = OmegaConf.merge(base, OmegaConf.masked_copy(cfg, [k for k in cfg if k not in chosen]))
    for key, node in chosen.items():
        merged[key] = node
    if chosen:
        origin = {
            k: "chosen on the command line" if k in chosen else f"from ckpt_path={ckpt_path!r}"
            for k in ("model", "data")
        }
        hint = (
            "choose a model and data that agree"
            if len(chosen) == 2
            else f"drop {next(iter(chosen))}=... to use the checkpoint's own"
        )
        check_model_fits_data(merged, origin, hint)
    return merged, checkpoint


def check_model_fits_data(cfg: DictConfig, origin: Mapping[str, str], hint: str) -> None:
    """Raise ``ValueError`` when ``cfg.model`` and ``cfg.data`` disagree on the task, the number
    of classes or the input channels (a checkpoint's model given another dataset, say).

    ``origin`` says where ``model`` and ``data`` came from; ``hint`` how to fix it."""
    for model_key, data_key in _MUST_AGREE:
        model_value = OmegaConf.select(cfg, model_key, default=None, throw_on_missing=False)
        data_value = OmegaConf.select(cfg, data_key, default=None, throw_on_missing=False)
        if model_value is not None and data_value is not None and model_value != data_value:
            raise ValueError(
                f"{data_key}={data_value!r} ({origin['data']}) but {model_key}={model_value!r} "
                f"({origin['model']}); expected the model and the data to agree: {hint}"
            )


def load_weights(
    model: LightningModule,
    checkpoint: Mapping[str, Any],
    source: str,
    expected: str = "weights of this model (drop model=... to use the checkpoint's own)",
) -> None:
    """Load ``checkpoint["state_dict"]`` into ``model`` as Lightning does for ``ckpt_path``
    (``on_load_checkpoint`` hook, then a strict ``load_state_dict``).

    Raises:
        ValueError: naming ``source`` (``ckpt_path=...``) and the missing, unexpected or
            misshapen tensors when the weights are of another model; ``expected`` ends it.
    """
    checkpoint = dict(checkpoint)  # the hook may edit it, as under Lightning; the caller's stays
    model.on_load_checkpoint(checkpoint)
    state = checkpoint["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        problems = []
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape (checkpoint vs model)", misshapen),
        ):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
        raise ValueError(
            f"{source}: its weights do not fit the model {type(model).__name__}("
            f"{type(getattr(model, 'net', model)).__name__}) ({'; '.join(problems)}); "
            f"expected {expected}"
        )
    model.load_state_dict(state, strict=True)
