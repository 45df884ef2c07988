"""OmegaConf resolvers and small config helpers shared by the entry points."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = [
    "compose_config",
    "make_run_name",
    "project_root",
    "register_resolvers",
    "run_config",
    "task_overrides",
    "upgrade_data_config",
]

# Overrides left out of run names: where a run writes, how it logs and what it resumes from do
# not change what ran (a key, or a key followed by "." for its subkeys).
RUN_NAME_SKIPS = ("paths", "hydra", "logger", "run_name", "task_name", "tags", "ckpt_path")
RUN_NAME_SKIPS += ("resume",)
RUN_NAME_MAX = 80


def project_root() -> Path:
    """The folder holding ``conf/`` for a source checkout; the working directory otherwise.

    ``$SEGLAB_ROOT`` wins when set, so DDP children and tests see the same root.
    """
    if env := os.environ.get("SEGLAB_ROOT"):
        return Path(env).resolve()
    candidate = Path(__file__).resolve().parents[3]
    if (candidate / "conf" / "train.yaml").is_file():
        return candidate
    return Path.cwd().resolve()


def compose_config(
    name: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` as its command line would compose it,
    outside a Hydra run (benchmarks, tests): the resolvers are registered and the Hydra context
    is set, so ``${hydra:...}`` interpolations resolve; with ``output_dir``, the run's outputs
    and logs go under it (``paths.output_dir``, ``paths.log_dir``)."""
    register_resolvers()
    paths = [] if output_dir is None else [f"paths.output_dir={output_dir}"]
    paths += [] if output_dir is None else [f"paths.log_dir={output_dir}/logs"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(project_root() / "conf")):
        cfg = compose(name, overrides=[*paths, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def _no_env(name: str) -> bool:
    return not os.environ.get(name)


def _concat(*lists: list) -> list:
    return [item for items in lists for item in items]


def _by_task(task: str, semantic: object, instance: object, panoptic: object) -> object:
    """Pick the value of a data config key that differs between task views."""
    choices = {"semantic": semantic, "instance": instance, "panoptic": panoptic}
    if task not in choices:
        raise ValueError(f"task={task!r}: expected one of {list(choices)}")
    return choices[task]


def _hydra_choices() -> tuple[dict[str, Any], Any]:
    """The run's config-group choices and Hydra config ({} and None outside a Hydra run)."""
    if not HydraConfig.initialized():
        return {}, None
    hydra = HydraConfig.get()
    return dict(hydra.runtime.choices), hydra


def _run_group() -> str:
    """``${run_group:}``: the W&B group of a run: the ``experiment=`` chosen, else the sweep
    folder's name in a multirun, else ""."""
    choices, hydra = _hydra_choices()
    if choices.get("experiment"):
        return str(choices["experiment"])
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        return Path(hydra.sweep.dir).name
    return ""


def _run_tags(tags: list | None = None) -> list[str]:
    """``${run_tags:${tags}}``: the model and data chosen, then ``tags``, each once."""
    choices, _ = _hydra_choices()
    found = [choices.get("model"), choices.get("data"), *(tags or [])]
    return list(dict.fromkeys(str(t) for t in found if t))


def _dataset(key: str, *, _parent_: DictConfig) -> Any:
    """``${dataset:KEY}`` in a data config: the declared default of ``data.KEY`` in the Python
    metadata of the node's ``_target_`` (``SegmentationDataModule.declared``), for its task."""
    value = get_class(_parent_._target_).declared(key, _parent_.get("task", "semantic"))
    return list(value) if isinstance(value, tuple) else value


def upgrade_data_config(data: DictConfig) -> None:
    """Rewrite, in place, the weight-map keys of a data config saved before ``data.weight_map``
    became an object: ``weight_map: true`` with ``w0``, ``sigma`` and ``w_c`` becomes
    ``{_target_: seglab.data.weight_maps.UNetWeightMap, ...}``, ``false`` becomes null."""
    if not isinstance(data.get("weight_map"), bool):
        return
    legacy = {k: data.pop(k) for k in ("w0", "sigma", "w_c") if k in data}
    if data.weight_map:
        legacy["class_weights"] = legacy.pop("w_c", "balanced")
        data.weight_map = {"_target_": "seglab.data.weight_maps.UNetWeightMap", **legacy}
    else:
        data.weight_map = None


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def make_run_name(model: str | None, data: str | None, overrides: Iterable[str] = ()) -> str:
    """``model-data`` followed by the task overrides that say how this run differs, sorted:
    ``make_run_name("unet_small", "shapes", ["optimizer.lr=0.003"])`` is
    ``"unet_small-shapes-optimizer.lr=0.003"``.

    The ``model=`` and ``data=`` choices (already in the name) and the keys of
    ``RUN_NAME_SKIPS`` are left out. The name is safe as a file name and a W&B / TensorBoard run
    name: whitespace, quotes and brackets are dropped, other characters than letters, digits
    and ``._,=+-`` become ``_``. Longer than ``RUN_NAME_MAX`` characters, it is cut and ends with
    8 hex digits of the full name's SHA-1, so that two different runs keep different names.
    """
    kept = []
    for override in overrides:
        key = _override_key(str(override))
        if key in ("model", "data") or any(
            key == skip or key.startswith(f"{skip}.") for skip in RUN_NAME_SKIPS
        ):
            continue
        kept.append(str(override))
    full = "-".join([str(p) for p in (model, data) if p] + sorted(kept))
    name = re.sub(r"[\s'\"{}\[\]()]", "", full)
    name = re.sub(r"[^A-Za-z0-9._,=+-]+", "_", name) or "run"
    if len(name) > RUN_NAME_MAX:
        digest = hashlib.sha1(full.encode()).hexdigest()[:8]
        name = f"{name[: RUN_NAME_MAX - 9]}-{digest}"
    return name


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (``hydra.overrides.task``); [] outside
    Hydra."""
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's whole resolved config as plain values, without Hydra's own settings
    (``cfg.hydra`` when composed with them), plus ``overrides``: the job's task overrides."""
    config = {}
    for key in cfg:
        if key == "hydra":  # Hydra's settings; its sweep keys do not resolve in a single run
            continue
        value = cfg[key]
        config[key] = (
            OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        )
    config["overrides"] = task_overrides()
    return config


def register_resolvers() -> None:
    """Register the resolvers the configs use, once per process.

    ``${seglab_root:}`` project root, ``${no_env:NAME}`` true when $NAME is unset or empty,
    ``${len:LIST}``, ``${concat:LIST,LIST,...}``, ``${by_task:TASK,SEMANTIC,INSTANCE,PANOPTIC}``,
    ``${dataset:KEY}`` (a data config's declared default of KEY),
    ``${run_name:MODEL,DATA,OVERRIDES}`` (``make_run_name``), ``${run_group:}`` and
    ``${run_tags:LIST}`` (a run's W&B group and tags).
    """
    resolvers = {
        "seglab_root": lambda: str(project_root()),
        "no_env": _no_env,
        "len": len,
        "concat": _concat,
        "by_task": _by_task,
        "dataset": _dataset,
        "run_name": lambda model, data, overrides: make_run_name(model, data, list(overrides)),
        "run_group": _run_group,
        "run_tags": _run_tags,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
