"""Comparing runs: ``python src/compare.py PATH...`` writes one HTML report from run folders, and
``log_hparams`` puts a run's varying settings and results in TensorBoard's HParams view.

The report reads only what a run folder holds (``.hydra/``, ``metrics.json``, ``csv/metrics.csv``,
``checkpoints/``, ``visuals/``), so it works offline, for finished, failed and running runs alike.
Its images are embedded as data URIs, so the HTML file can be mailed on its own; the curve
pictures are also written as PNG files to ``<report>_files/`` beside it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import html
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seglab.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "CompareError",
    "Run",
    "find_runs",
    "hparam_metrics",
    "hparams_of",
    "load_run",
    "log_hparams",
    "main",
    "swept_keys",
    "varying_keys",
    "write_report",
]

log = logging.getLogger(__name__)

RUN_FOLDER = (
    "a run folder (one holding .hydra/config.yaml or metrics.json, as `python src/train.py` "
    "writes) or a sweep folder holding run folders (0/, 1/, ... of `python src/train.py -m`)"
)
# top-level config keys that name where a run wrote, not what it ran
_NOISE_KEYS = ("hydra", "paths")
# the config groups whose choice the report and the HParams view show as a column
_CHOICE_GROUPS = ("model", "data", "experiment")
# folders inside a run folder that never hold another run
_RUN_PARTS = {"checkpoints", "csv", "tensorboard", "wandb", "visuals", ".hydra"}
_DEFAULT_MONITOR = "val/miou"
_OVERLAY_LIMIT = 16
_LEGEND_LIMIT = 8
_PER_CLASS = re.compile(r"^(?P<stage>[a-z]+)/iou_(?P<cls>.+)$")
_VISUALS_EPOCH = re.compile(r"^epoch_(\d+)$")
# BatchNorm statistics: tensors in a state_dict that are not parameters
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class CompareError(ValueError):
    """A path given to ``compare.py`` that is missing, or holds no run."""


@dataclass
class Run:
    """What the report shows of one run folder."""

    path: Path
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    status: str = "running/failed"
    monitor: str = _DEFAULT_MONITOR
    best: float | None = None
    best_epoch: int | None = None
    final: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    wall_time_s: float | None = None
    params: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    class_iou: dict[str, float] = field(default_factory=dict)
    overlays: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG)
    overlay_folder: Path | None = None
    overlay_epoch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str | None:
        task = self.config.get("model.task")
        return task if isinstance(task, str) and "${" not in task else None


# --------------------------------------------------------------------------- finding the runs


def is_run_folder(path: Path) -> bool:
    """A folder ``python src/train.py`` wrote: its ``.hydra/config.yaml`` or ``metrics.json``."""
    return (path / ".hydra" / "config.yaml").is_file() or (path / "metrics.json").is_file()


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run folders named by ``paths``: run folders, sweep folders (searched below for run
    folders) and glob patterns, in the order given, each run once.

    Raises:
        CompareError: a path (or pattern) that matches nothing, is not a folder, or holds no run.
    """
    paths = [str(p) for p in paths]
    found: dict[Path, None] = {}
    for given in paths:
        matches = [Path(given)]
        if not matches[0].exists() and glob.has_magic(given):
            matches = [Path(p) for p in sorted(glob.glob(given, recursive=True))]
            if not matches:
                raise CompareError(f"{given}: no path matches this pattern; expected {RUN_FOLDER}")
        for path in matches:
            if not path.exists():
                raise CompareError(f"{path}: no such folder; expected {RUN_FOLDER}")
            if not path.is_dir():
                raise CompareError(f"{path}: is a file, not a folder; expected {RUN_FOLDER}")
            runs = _runs_below(path)
            if not runs and len(matches) == 1:
                raise CompareError(f"{path}: holds no run folder; expected {RUN_FOLDER}")
            for run in runs:
                found.setdefault(run.resolve(), None)
    if not found:
        raise CompareError(f"{' '.join(paths)}: no run folder found; {RUN_FOLDER}")
    return list(found)


def _runs_below(path: Path) -> list[Path]:
    if is_run_folder(path):
        return [path]
    runs = []
    for root, dirs, _ in os.walk(path):
        here = Path(root)
        if here != path and is_run_folder(here):
            runs.append(here)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _RUN_PARTS)
    return sorted(runs, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort ``10/`` after ``9/``: job numbers are folder names."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


# --------------------------------------------------------------------------- reading one run


def load_run(path: Path, label: str | None = None) -> Run:
    """Read what the report needs from the run folder ``path``; anything absent stays empty,
    and a file that cannot be read adds a note instead of failing the report."""
    run = Run(path=path, label=label or path.name)
    run.config, run.overrides = _read_config(path, run.notes)
    run.monitor = str(run.config.get("model.monitor", _DEFAULT_MONITOR))
    run.history = _read_csv(path / "csv" / "metrics.csv", run.notes)
    metrics = _read_json(path / "metrics.json", run.notes)

    if metrics is not None:
        run.status = str(metrics.get("status", "completed"))
        run.overrides = list(metrics.get("overrides", run.overrides))
        monitor = metrics.get("monitor") or {}
        run.monitor = str(monitor.get("name", run.monitor))
        run.best, run.best_epoch = _number(monitor.get("best")), monitor.get("best_epoch")
        run.final = _floats(metrics.get("fit", {}))
        run.test = _floats(metrics.get("test") or {})
        run.epochs = metrics.get("epochs")
        run.wall_time_s = _number(metrics.get("wall_time_s"))
    if run.best is None:
        run.best, run.best_epoch = _best_from_history(run.history, run.monitor)
    if not run.final:
        run.final = _last_values(run.history)
    if run.epochs is None:
        trained = [r["epoch"] for r in run.history if "epoch" in r and _has_stage(r, "train/")]
        run.epochs = int(max(trained)) + 1 if trained else None
    if run.wall_time_s is None:
        run.wall_time_s = _wall_time_from_files(path)

    run.params = _count_parameters(path, metrics, run.notes)
    if run.task in (None, "semantic"):
        run.class_iou = _class_iou(run, metrics)
    run.overlay_epoch, run.overlay_folder, run.overlays = _overlays(path, run.notes)
    return run


def _read_config(path: Path, notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    hydra_dir = path / ".hydra"
    flat: dict[str, Any] = {}
    overrides: list[str] = []
    try:
        if (hydra_dir / "config.yaml").is_file():
            container = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"))
            for key in _NOISE_KEYS:
                container.pop(key, None)
            flat = _flatten(container)
        if (hydra_dir / "hydra.yaml").is_file():
            choices = OmegaConf.select(
                OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices", default={}
            )
            flat.update({g: choices[g] for g in _CHOICE_GROUPS if choices.get(g) is not None})
        if (hydra_dir / "overrides.yaml").is_file():
            overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    except Exception as err:  # a half-written or hand-edited file: report it, keep going
        notes.append(f".hydra/ unreadable ({type(err).__name__}: {err})")
    return flat, overrides


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, list | dict):
        value = json.dumps(value, separators=(",", ":"))
    return {prefix[:-1]: value}


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"metrics.json unreadable ({type(err).__name__})")
        return None
    return data if isinstance(data, dict) else None


def _read_csv(path: Path, notes: list[str]) -> list[dict[str, float]]:
    """Rows of Lightning's CSVLogger file, empty cells left out."""
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                values = {k: _number(v) for k, v in row.items() if k and v not in ("", None)}
                rows.append({k: v for k, v in values.items() if v is not None})
    except (OSError, csv.Error) as err:
        notes.append(f"csv/metrics.csv unreadable ({type(err).__name__})")
    return rows


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _floats(values: dict[str, Any]) -> dict[str, float]:
    numbers = {k: _number(v) for k, v in values.items()}
    return {k: v for k, v in numbers.items() if v is not None}


def _has_stage(row: dict[str, float], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in row)


def _best_from_history(
    history: list[dict[str, float]], monitor: str
) -> tuple[float | None, int | None]:
    scored = [r for r in history if monitor in r]
    if not scored:
        return None, None
    best = max(scored, key=lambda r: r[monitor])  # the monitored metric's mode is max
    return best[monitor], int(best["epoch"]) if "epoch" in best else None


def _last_values(history: list[dict[str, float]]) -> dict[str, float]:
    last: dict[str, float] = {}
    for row in history:
        last.update({k: v for k, v in row.items() if k not in ("epoch", "step")})
    return last


def _wall_time_from_files(path: Path) -> float | None:
    """Without ``metrics.json``'s wall time: from Hydra's config (written as the job starts) to
    the newest log file (a running run's time so far)."""
    start = path / ".hydra" / "config.yaml"
    logs = [path / "csv" / "metrics.csv", path / "train.log", path / "metrics.json"]
    try:
        ends = [p.stat().st_mtime for p in logs if p.is_file()]
        return max(0.0, max(ends) - start.stat().st_mtime) if ends else None
    except OSError:  # removed while being read
        return None


def _count_parameters(path: Path, metrics: dict | None, notes: list[str]) -> int | None:
    """Tensors in a checkpoint's ``state_dict`` less BatchNorm statistics; memory-mapped and
    weights only, so a large checkpoint costs neither time nor memory."""
    import torch

    candidates = []
    if metrics and metrics.get("best_checkpoint"):
        candidates.append(Path(metrics["best_checkpoint"]))
    candidates += sorted((path / "checkpoints").glob("*.ckpt"))
    for ckpt in candidates:
        if not ckpt.is_file():
            continue
        try:
            state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:
            notes.append(f"{ckpt.name} unreadable ({type(err).__name__})")
            continue
        weights = state.get("state_dict", {}) if isinstance(state, dict) else {}
        return sum(
            t.numel()
            for k, t in weights.items()
            if hasattr(t, "numel") and not k.endswith(_BUFFER_SUFFIXES)
        )
    return None


def _class_iou(run: Run, metrics: dict | None) -> dict[str, float]:
    """``val/iou_<class>`` of the best checkpoint's validation, else of the best epoch in the CSV,
    else of the last validation row."""
    source = _floats((metrics or {}).get("val") or {})
    if not any(_PER_CLASS.match(k) for k in source):
        rows = [r for r in run.history if any(_PER_CLASS.match(k) for k in r)]
        best = [r for r in rows if run.best_epoch is not None and r.get("epoch") == run.best_epoch]
        source = (best or rows[-1:] or [{}])[0]
    ious = {}
    for key, value in source.items():
        match = _PER_CLASS.match(key)
        if match and match["stage"] == "val":
            ious[match["cls"]] = value
    return ious


def _overlays(
    path: Path, notes: list[str]
) -> tuple[int | None, Path | None, list[tuple[str, bytes]]]:
    """The PNGs of the newest ``visuals/epoch_NNN/`` (the first ``_OVERLAY_LIMIT``), read now:
    a running job may replace them while the report is written."""
    epochs = []
    for folder in (path / "visuals").glob("epoch_*"):
        match = _VISUALS_EPOCH.match(folder.name)
        if match and folder.is_dir():
            epochs.append((int(match[1]), folder))
    if not epochs:
        return None, None, []
    epoch, folder = max(epochs)
    images = []
    for png in sorted(folder.glob("*.png")):
        if len(images) == _OVERLAY_LIMIT:
            notes.append(f"overlays: the first {_OVERLAY_LIMIT} of {folder} shown")
            break
        try:
            images.append((png.name, png.read_bytes()))
        except OSError as err:
            notes.append(f"{png.name} unreadable ({type(err).__name__})")
    return epoch, folder, images


# --------------------------------------------------------------------------- comparing


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The config keys whose values differ between ``runs`` (absent counts as a value).

    Where runs chose different options of a group (``model=unet_small`` vs ``model=fcn8s``), the
    group's column stands for its keys, unless a key was also overridden on its own.
    """
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    missing = object()
    differ = [k for k in keys if len({repr(r.config.get(k, missing)) for r in runs}) > 1]
    if len(runs) < 2:
        differ = []
    overridden = {_override_key(o) for r in runs for o in r.overrides}
    groups = {k for k in differ if k in _CHOICE_GROUPS}
    return [k for k in differ if k in groups or k in overridden or k.split(".", 1)[0] not in groups]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _sort_key(run: Run) -> tuple[int, float]:
    return (run.best is None, -(run.best or 0.0))


def _metric_columns(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Summary metrics (not per class, not learning rates) of the last epoch, and of the test."""
    final: dict[str, None] = {}
    test: dict[str, None] = {}
    for run in runs:
        final.update(dict.fromkeys(k for k in run.final if _is_summary(k)))
        test.update(dict.fromkeys(k for k in run.test if _is_summary(k)))
    monitors = {r.monitor for r in runs}
    order = sorted(final, key=lambda k: (k not in monitors, not k.startswith("val/"), k))
    return order, sorted(test)


def _is_summary(key: str) -> bool:
    return "/" in key and not _PER_CLASS.match(key) and not key.startswith(("lr-", "best/"))


# --------------------------------------------------------------------------- pictures


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _curve_png(metric: str, runs: Sequence[Run]) -> bytes | None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(3.8, 2.6), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for i, run in enumerate(runs):
        points = [(r["step"], r[metric]) for r in run.history if metric in r and "step" in r]
        if not points:
            continue
        xs, ys = zip(*points)
        marker = "o" if len(points) < 30 else None
        ax.plot(xs, ys, marker=marker, ms=3, lw=1.4, color=_color(i), label=run.label)
        drawn = True
    if not drawn:
        return None
    if len(runs) <= _LEGEND_LIMIT:  # more entries would crowd out the plot: see the page's key
        ax.legend(fontsize=6, frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _class_iou_png(runs: Sequence[tuple[int, Run]], classes: list[str]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(14.0, 2.0 + 0.3 * len(classes) * max(1, len(runs))), 2.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for j, (i, run) in enumerate(runs):
        xs = [c + (j - (len(runs) - 1) / 2) * width for c in range(len(classes))]
        ys = [run.class_iou.get(name, 0.0) for name in classes]
        ax.bar(xs, ys, width=width, color=_color(i), label=run.label)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("IoU", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.set_layout_engine("constrained")
    return _png(fig)


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------- the report


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
p.meta { color: #666; margin: 0 0 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #234b78; color: #fff; font-weight: 600; white-space: normal;
  max-width: 110px; vertical-align: bottom; }
div.scroll { overflow-x: auto; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #f3f5f9; }
td.best { font-weight: 700; }
span.dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px;
  margin-right: 6px; }
.status-failed { color: #b00; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.grid img { border: 1px solid #ddd; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; max-width: 220px;
  overflow-wrap: anywhere; }
.note { color: #777; font-style: italic; }
details summary { cursor: pointer; margin: 8px 0; }
"""


def write_report(runs: Sequence[Run], output: Path, title: str = "seglab runs") -> Path:
    """Write the HTML report of ``runs`` to ``output`` and its curve PNGs to
    ``<output stem>_files/``; both atomically. Returns ``output``."""
    runs = sorted(runs, key=_sort_key)
    files = output.with_name(f"{output.stem}_files")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(runs)} runs, written {_e(time.strftime("%Y-%m-%d %H:%M"))} by '
        "<code>python src/compare.py</code></p>",
        _runs_table(runs),
        _curves_section(runs, files),
        _class_iou_section(runs, files),
        _overlays_section(runs),
        "</body></html>",
    ]
    atomic_write_text(output, "\n".join(parts) + "\n")
    return output


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    """A metric or a count: 4 decimals below 1 (IoU, accuracy), else 4 significant digits."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"


def _fmt_setting(value: Any) -> str:
    """A config value as YAML writes it (a learning rate of 1e-05 stays 1e-05)."""
    return "null" if value is None else _e(str(value).lower() if isinstance(value, bool) else value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "&mdash;"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _runs_table(runs: Sequence[Run]) -> str:
    keys = varying_keys(runs)
    final, test = _metric_columns(runs)
    monitors = sorted({r.monitor for r in runs})
    best_name = monitors[0] if len(monitors) == 1 else "monitored"
    head = ["run", "status", *keys, f"best {best_name}", "best epoch"]
    head += [f"final {k}" for k in final] + list(test) + ["epochs", "wall time", "parameters"]
    text_cols = {0, 1, *range(2, 2 + len(keys))}
    cells = ["<tr>"] + [
        f'<th class="{"text" if i in text_cols else ""}">{_e(h)}</th>' for i, h in enumerate(head)
    ]
    rows = ["".join(cells) + "</tr>"]
    order = {id(r): i for i, r in enumerate(runs)}
    top = max((r.best for r in runs if r.best is not None), default=None)
    for run in runs:
        status = "failed" if run.status != "completed" else "ok"
        dot = f'<span class="dot" style="background:{_color(order[id(run)])}"></span>'
        row = [
            f'<td class="text">{dot}{_e(run.label)}</td>',
            f'<td class="text status-{status}">{_e(run.status)}</td>',
        ]
        row += [
            f'<td class="text">{_fmt_setting(run.config[k]) if k in run.config else "&mdash;"}</td>'
            for k in keys
        ]
        best_cls = ' class="best"' if run.best is not None and run.best == top else ""
        row += [f"<td{best_cls}>{_fmt(run.best)}</td>", f"<td>{_fmt(run.best_epoch)}</td>"]
        row += [f"<td>{_fmt(run.final.get(k))}</td>" for k in final]
        row += [f"<td>{_fmt(run.test.get(k))}</td>" for k in test]
        row += [
            f"<td>{_fmt(run.epochs)}</td>",
            f"<td>{_duration(run.wall_time_s)}</td>",
            f"<td>{_fmt(run.params)}</td>",
        ]
        rows.append("<tr>" + "".join(row) + "</tr>")
    same = "" if keys else '<p class="note">The runs share every config key (or there is one).</p>'
    notes = [f"{r.label}: {n}" for r in runs for n in r.notes]
    notes_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return (
        "<h2>Runs</h2>"
        f'<p class="meta">Sorted by the best {_e(best_name)} (max); columns: the config keys '
        "that differ between the runs, then the last epoch's metrics.</p>"
        f'<div class="scroll"><table id="runs">{"".join(rows)}</table></div>{same}{notes_html}'
    )


def _curves_section(runs: Sequence[Run], files: Path) -> str:
    metrics: dict[str, None] = {}
    for run in runs:
        for row in run.history:
            metrics.update(dict.fromkeys(k for k in row if k not in ("epoch", "step")))
    metrics = {k: None for k in metrics if not k.startswith("best/")}
    if not metrics:
        return '<h2>Curves</h2><p class="note">No run has a csv/metrics.csv (logger=csv).</p>'
    monitors = {r.monitor for r in runs}
    order = sorted(metrics, key=lambda k: (k not in monitors, not k.startswith("val/"), k))
    legend = " ".join(
        f'<span class="dot" style="background:{_color(i)}"></span>{_e(r.label)}&emsp;'
        for i, r in enumerate(runs)
    )
    main, per_class = [], []
    for metric in order:
        png = _curve_png(metric, runs)
        if png is None:
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric) + ".png"
        atomic_write_bytes(files / name, png)
        img = f'<img class="curve" alt="{_e(metric)}" src="{_data_uri(png)}">'
        (per_class if _PER_CLASS.match(metric) else main).append(img)
    details = (
        f'<details><summary>per-class curves ({len(per_class)})</summary><div class="grid">'
        f"{''.join(per_class)}</div></details>"
        if per_class
        else ""
    )
    return (
        f'<h2>Curves</h2><p class="meta">{legend}</p>'
        f'<div class="grid" id="curves">{"".join(main)}</div>{details}'
    )


def _class_iou_section(runs: Sequence[Run], files: Path) -> str:
    scored = [(i, r) for i, r in enumerate(runs) if r.class_iou]
    if not scored:
        return '<h2>Per-class IoU</h2><p class="note">No semantic run logged val/iou_&lt;class&gt;.</p>'
    classes: dict[str, None] = {}
    for _, run in scored:
        classes.update(dict.fromkeys(run.class_iou))
    names = list(classes)
    head = '<tr><th class="text">class</th>' + "".join(f"<th>{_e(r.label)}</th>" for _, r in scored)
    rows = [head + "</tr>"]
    for name in names:
        values = [r.class_iou.get(name) for _, r in scored]
        top = max((v for v in values if v is not None), default=None)
        row = "".join(
            f"<td{' class=best' if v is not None and v == top and len(scored) > 1 else ''}>"
            f"{_fmt(v)}</td>"
            for v in values
        )
        rows.append(f'<tr><td class="text">{_e(name)}</td>{row}</tr>')
    png = _class_iou_png(scored, names)
    atomic_write_bytes(files / "per_class_iou.png", png)
    return (
        '<h2>Per-class IoU</h2><p class="meta">val/iou_&lt;class&gt; of the best checkpoint '
        "(else the best or last epoch in the CSV).</p>"
        f'<table id="class-iou">{"".join(rows)}</table>'
        f'<p><img alt="per-class IoU" src="{_data_uri(png)}"></p>'
    )


def _overlays_section(runs: Sequence[Run]) -> str:
    parts = ["<h2>Overlays</h2>"]
    for run in runs:
        parts.append(f"<h3>{_e(run.label)}</h3>")
        if not run.overlays:
            parts.append(
                '<p class="note">No overlays: the run folder has no visuals/epoch_NNN/*.png '
                "(written by the visuals callback).</p>"
            )
            continue
        figures = "".join(
            f'<figure><img alt="{_e(name)}" src="{_data_uri(data)}" width="220">'
            f"<figcaption>{_e(name)}</figcaption></figure>"
            for name, data in run.overlays
        )
        parts.append(
            f'<p class="meta">epoch {run.overlay_epoch}: {_e(run.overlay_folder)}</p>'
            f'<div class="grid overlays">{figures}</div>'
        )
    return "".join(parts)


# --------------------------------------------------------------------------- command line


def _labels(paths: Sequence[Path]) -> list[str]:
    """Each run's path relative to the runs' common parent folder."""
    parent = Path(os.path.commonpath([p.parent for p in paths]))
    return [str(p.relative_to(parent)) for p in paths]


def default_output(paths: Sequence[Path]) -> Path:
    """``compare.html`` in the runs' common parent folder (a sweep's own folder)."""
    return Path(os.path.commonpath([p.parent for p in paths])) / "compare.html"


def main(argv: Sequence[str] | None = None) -> int:
    """``python src/compare.py PATH... [--output FILE.html]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare training runs in one HTML report: the config keys that differ,\n"
        "best and final metrics, wall time and size, metric curves, per-class IoU and overlays.\n"
        "Reads only the run folders (.hydra/, metrics.json, csv/metrics.csv, checkpoints/,\n"
        "visuals/).",
        epilog="Examples:\n"
        "  python src/compare.py logs/train/multiruns/2026-11-30_12-00-00\n"
        "  python src/compare.py 'logs/train/runs/*' --output runs.html\n"
        "  python src/compare.py logs/train/multiruns/*/0 logs/train/runs/2026-11-29_*",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="run folders, sweep folders or glob patterns"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the HTML file to write (default: compare.html in the runs' common parent folder, "
        "which for one sweep is the sweep folder); PNGs go to <name>_files/ beside it",
    )
    parser.add_argument("--title", default=None, help="the report's title")
    args = parser.parse_args(argv)
    try:
        paths = find_runs(args.paths)
    except CompareError as err:
        parser.error(str(err))
    output = args.output or default_output(paths)
    if output.is_dir():
        parser.error(f"--output {output}: is a folder; expected an .html file path")
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    title = args.title or f"seglab: {len(runs)} runs under {os.path.commonpath(paths)}"
    write_report(runs, output, title=title)
    print(f"compare: {len(runs)} runs -> {output}")
    return 0


# --------------------------------------------------------------------------- TensorBoard HParams


def hparams_of(
    overrides: Sequence[str],
    choices: dict[str, Any] | None = None,
    varying: Iterable[str] | None = None,
) -> dict[str, Any]:
    """A job's settings as HParams columns: its task overrides as ``key -> value`` (typed, as
    Hydra parses them) plus the ``model``, ``data`` and ``experiment`` choices.

    ``varying`` (a sweep's swept keys) keeps only those overrides: TensorBoard ticks the first
    few columns alone, and the keys every job shares would hide the ones that matter.
    ``paths.*`` and ``hydra.*`` say where a job wrote, not what it ran, and are left out.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keep = set(varying) if varying else None
    params: dict[str, Any] = {
        g: str(v) for g, v in (choices or {}).items() if g in _CHOICE_GROUPS and v is not None
    }
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete() or key.split(".", 1)[0].split("/", 1)[0] in _NOISE_KEYS:
            continue
        if keep is not None and key not in keep:
            continue
        value = override.value()
        if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
            value = override.get_value_element_as_str()
        params[key] = value
    return params


def swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """The keys a multirun varies: its sweeper's search space (``hydra.sweeper.params``, as the
    Optuna sweeper and a basic sweeper's config give it) and the command line's sweep overrides
    (``a=1,2``, ``b=range(3)``), which Hydra saves in the sweep folder's ``multirun.yaml``.
    Empty for a single run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return set()
    keys = {str(k) for k in (OmegaConf.select(hydra_cfg, "sweeper.params") or {})}
    try:
        sweep_dir = Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)
        saved = OmegaConf.load(sweep_dir / "multirun.yaml")
        task = list(OmegaConf.select(saved, "hydra.overrides.task", default=[]) or [])
        overrides = OverridesParser.create().parse_overrides(task)
    except Exception as err:  # another launcher or sweeper may keep no multirun.yaml
        log.debug("no sweep overrides for the HParams view: %s", err)
        return keys
    return keys | {o.key_or_group for o in overrides if o.is_sweep_override()}


def hparam_metrics(metrics: dict[str, Any], monitor: str, best: float | None) -> dict[str, float]:
    """The HParams view's metric columns, under ``hp/`` so that the run's own curves are not
    touched: ``hp/best/<monitor>`` (the best monitored value) and the best checkpoint's other
    validation metrics, ``hp/final/<name>`` of the last epoch, ``hp/test/<name>``; per-class IoU
    left out. The monitored metric comes first: TensorBoard ticks the first few columns alone."""
    values: dict[str, float] = {}
    if best is not None:
        values[f"hp/best/{monitor}"] = best
    sources = (("hp/best/", "val"), ("hp/final/", "fit"), ("hp/", "test"))
    for prefix, source in sources:
        for key, value in _floats(metrics.get(source) or {}).items():
            if _is_summary(key) and (source != "fit" or key.startswith(("val/", "train/loss"))):
                values.setdefault(prefix + key, value)
    first = [f"hp/best/{monitor}", f"hp/final/{monitor}"]
    return dict(sorted(values.items(), key=lambda kv: kv[0] not in first))


def log_hparams(trainer: Any, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Write the run's HParams session to each TensorBoard logger of ``trainer``, so that
    ``tensorboard --logdir <sweep folder>`` lists the sweep's jobs in its HParams view.

    Call once, after the final metrics are known (``seglab.train.train``): TensorBoard reads the
    first HParams session of a run only, and Lightning writes none itself here
    (``default_hp_metric: false``). The columns are the job's overrides (in a multirun, the
    swept ones: ``swept_keys``) and its model / data choices (``hparams_of``); ``metrics`` is
    what ``train`` returns (``fit``, ``val``, ``test``). TensorBoard takes the column list from
    one run of a log folder, so runs of sweeps over different keys share one folder badly.
    """
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return
    overrides: list[str] = []
    choices: dict[str, Any] = {}
    varying: set[str] = set()
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        choices = dict(hydra_cfg.runtime.choices)
        varying = swept_keys(hydra_cfg)
    monitor = OmegaConf.select(cfg, "model.monitor", default=_DEFAULT_MONITOR)
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None) if callback else None
    best = _number(score.item() if hasattr(score, "item") else score)
    values = hparam_metrics(metrics, monitor, best)
    if not values:
        log.warning("no final metrics to show in TensorBoard's HParams view")
        return
    params = hparams_of(overrides, choices, varying)
    for logger in loggers:
        logger.log_hyperparams(params, values, step=trainer.global_step)
        logger.finalize("success")  # flush: the fit's writer was already closed
