"""``python src/compare.py`` and TensorBoard's HParams view, on a two-job sweep trained once."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import QUICK_TRAIN, compose_config, run_cli

from seglab.compare import Run, hparams_of, main, varying_keys
from seglab.utils.instantiate import build_datamodule, build_task

LRS = ("0.001", "0.003")
# the report's table header colour (#234b78 in its CSS): found in the screenshot = table drawn
HEADER_RGB = (35, 75, 120)


class _Tables(HTMLParser):
    """Cell texts of each ``<table id=...>``, and the ``alt`` and ``src`` of every image."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs_d = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = self.tables.setdefault(attrs_d.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs_d)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _best_csv(run: Path, metric: str = "val/miou") -> float:
    return max(float(r[metric]) for r in _history(run) if r.get(metric))


def _same(cell: str, value: float) -> bool:
    """``cell`` shows ``value`` to the report's precision (4 decimals or 4 significant digits)."""
    return float(cell.replace(",", "")) == pytest.approx(value, rel=1e-3, abs=5e-5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A two-job multirun (learning rates 0.001 and 0.003), logged to CSV and TensorBoard."""
    logs = tmp_path_factory.mktemp("logs")
    quick = [o for o in QUICK_TRAIN if not o.startswith(("logger=", "trainer.max_epochs"))]
    args = ["-m", f"optimizer.lr={','.join(LRS)}", *quick, "trainer.max_epochs=2"]
    result = run_cli("train.py", *args, "logger=[csv,tensorboard]", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (logs / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1"]
    return folder


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    """The command line's report of ``sweep``."""
    output = tmp_path_factory.mktemp("report") / "report.html"
    result = run_cli("compare.py", str(sweep), "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(output) in result.stdout
    return output


@pytest.mark.slow
def test_report_table_shows_differing_keys_sorted_by_best(sweep, report):
    tables = _parse(report).tables
    head, *rows = tables["runs"]
    assert "optimizer.lr" in head
    # the same in both jobs: not a column
    assert not {"trainer.max_epochs", "data.image_size", "model", "seed"} & set(head)
    assert len(rows) == 2
    col = {name: i for i, name in enumerate(head)}
    assert sorted(r[col["optimizer.lr"]] for r in rows) == list(LRS)
    bests = [float(r[col["best val/miou"]]) for r in rows]
    assert bests == sorted(bests, reverse=True)
    for row in rows:
        run = sweep / row[col["run"]]
        saved = json.loads((run / "metrics.json").read_text())
        assert row[col["status"]] == saved.get("status", "completed")
        assert _same(row[col["best val/miou"]], _best_csv(run))
        assert _same(row[col["final val/miou"]], saved["fit"]["val/miou"])
        assert row[col["wall time"]] != "\N{EM DASH}"

    # parameters: the count of the model the config builds
    cfg = compose_config("train", [], sweep / "unused")
    net = build_task(cfg, build_datamodule(cfg.data)).net
    assert {r[col["parameters"]] for r in rows} == {f"{sum(p.numel() for p in net.parameters()):,}"}


@pytest.mark.slow
def test_report_has_every_curve_and_per_class_iou(sweep, report):
    parsed = _parse(report)
    logged = {k for r in _history(sweep / "0") for k, v in r.items() if v} - {"epoch", "step"}
    # the best checkpoint's post-fit scores are one row, not a curve: they are in the runs table
    assert any(k.startswith("best/") for k in logged)
    logged = {k for k in logged if not k.startswith("best/")}
    curves = {img["alt"]: img["src"] for img in parsed.images if img.get("class") == "curve"}
    assert set(curves) == logged
    png = base64.b64decode(curves["val/miou"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size[0] > 100
    assert (report.parent / "report_files" / "val_miou.png").read_bytes() == png

    head, *rows = parsed.tables["class-iou"]
    assert head[0] == "class" and sorted(head[1:]) == ["0", "1"]
    classes = ["flat", "speckle", "stripes", "disk", "square", "triangle"]
    assert sorted(r[0] for r in rows) == sorted(classes)
    for i, label in enumerate(head[1:], start=1):
        val = json.loads((sweep / label / "metrics.json").read_text())["val"]
        for row in rows:
            assert _same(row[i], val[f"val/iou_{row[0]}"])
    # each run's newest visuals/epoch_NNN/ pictures (drawn by the Visuals callback), embedded
    text = report.read_text()
    assert "No overlays" not in text
    for label in ("0", "1"):
        newest = sorted((sweep / label / "visuals").glob("epoch_*"))[-1]
        pngs = sorted(newest.glob("*.png"))
        assert pngs, f"no overlays drawn in {newest}"
        for png in pngs:
            assert base64.b64encode(png.read_bytes()).decode() in text


def _copy_run(src: Path, dst: Path) -> Path:
    # without its drawn visuals: the test puts its own pictures there
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tensorboard", "visuals"))
    return dst


@pytest.mark.slow
def test_report_of_a_failed_run_and_overlays(sweep, tmp_path, capsys):
    done = _copy_run(sweep / "0", tmp_path / "runs" / "done")
    broken = _copy_run(sweep / "1", tmp_path / "runs" / "broken")
    (broken / "metrics.json").unlink()  # as a run that failed or is still running leaves it
    pictures = {}
    for epoch, names in (
        (0, ["00_old.png"]),
        (3, ["00_a.png", "01_b.png", "confusion_matrix.png"]),
    ):
        folder = done / "visuals" / f"epoch_{epoch:03d}"
        folder.mkdir(parents=True)
        for k, name in enumerate(names):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (40 * k, 200, 10 * epoch)).save(buf, format="PNG")
            (folder / name).write_bytes(buf.getvalue())
            pictures[(epoch, name)] = base64.b64encode(buf.getvalue()).decode()

    assert main([str(tmp_path / "runs")]) == 0
    output = tmp_path / "runs" / "compare.html"  # the default: the runs' common parent
    assert str(output) in capsys.readouterr().out
    text = output.read_text()
    head, *rows = _parse(output).tables["runs"]
    col = {name: i for i, name in enumerate(head)}
    row = {r[col["run"]]: r for r in rows}
    assert row["broken"][col["status"]] == "running/failed"
    assert _same(row["broken"][col["best val/miou"]], _best_csv(broken))
    assert row["broken"][col["parameters"]] == row["done"][col["parameters"]]
    # the newest epoch's images only
    for name in ("00_a.png", "01_b.png", "confusion_matrix.png"):
        assert pictures[(3, name)] in text
    assert pictures[(0, "00_old.png")] not in text
    assert "epoch 3" in text and text.count("No overlays") == 1


def test_bad_paths_name_the_path_and_what_a_run_folder_is(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no run here")
    cases = {
        str(tmp_path / "missing"): "no such folder",
        str(empty): "holds no run folder",
        str(empty / "notes.txt"): "is a file",
        str(tmp_path / "nothing-*"): "no path matches",
    }
    for path, reason in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main([path])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert path in err and reason in err and ".hydra/config.yaml" in err
    assert not list(tmp_path.rglob("*.html"))


def test_output_that_is_a_folder_is_refused(sweep_like, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(sweep_like), "--output", str(tmp_path)])
    assert "--output" in capsys.readouterr().err


@pytest.fixture
def sweep_like(tmp_path) -> Path:
    """A folder holding one run folder with only a metrics.json (no training needed)."""
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"fit": {"val/miou": 0.5}, "val": {}}))
    return tmp_path / "sweep"


def test_varying_keys_let_a_group_choice_stand_for_its_keys():
    a = Run(Path("a"), config={"model": "unet_small", "model.net.depth": 4, "seed": 1, "x.y": 1})
    b = Run(Path("b"), config={"model": "fcn8s", "model.net.depth": 5, "seed": 1, "x.y": 2})
    assert varying_keys([a, b]) == ["model", "x.y"]
    b.overrides = ["model.net.depth=5"]  # set on its own: shown
    assert varying_keys([a, b]) == ["model", "model.net.depth", "x.y"]
    assert varying_keys([a]) == []


def test_hparams_of_a_job():
    overrides = [
        "optimizer.lr=0.01",
        "paths.log_dir=/elsewhere",
        "data.num_samples={train: 8}",
        "trainer.max_epochs=3",
        "model=fcn8s",
    ]
    choices = {"model": "fcn8s", "data": "shapes", "optimizer": "adam", "experiment": None}
    params = hparams_of(overrides, choices)
    assert params == {
        "model": "fcn8s",
        "data": "shapes",
        "optimizer.lr": 0.01,
        "data.num_samples": "{train:8}",
        "trainer.max_epochs": 3,
    }
    swept = hparams_of(overrides, choices, varying={"optimizer.lr"})
    assert swept == {"model": "fcn8s", "data": "shapes", "optimizer.lr": 0.01}


@pytest.mark.slow
def test_sweep_jobs_are_in_tensorboard_hparams(sweep):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(sweep))  # as `tensorboard --logdir <sweep>` reads it
    events.Reload()
    content = events.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert sorted(content) == ["0/tensorboard", "1/tensorboard"]
    lrs = []
    for run, tags in content.items():
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        hparams = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
        # the swept key and the model / data choices; not the keys every job shares
        assert set(hparams) == {"optimizer.lr", "model", "data"}
        assert (hparams["model"], hparams["data"]) == ("unet_small", "shapes")
        lrs.append(hparams["optimizer.lr"])

        experiment = metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
        names = [m.name.tag for m in experiment.metric_infos]
        assert names[:2] == ["hp/best/val/miou", "hp/final/val/miou"]
        folder = sweep / run.split("/")[0]
        saved = json.loads((folder / "metrics.json").read_text())
        best = events.Scalars(run, "hp/best/val/miou")[-1].value
        assert best == pytest.approx(_best_csv(folder), rel=1e-6)
        final = events.Scalars(run, "hp/final/val/miou")[-1].value
        assert final == pytest.approx(saved["fit"]["val/miou"], rel=1e-6)
    assert sorted(lrs) == pytest.approx([float(lr) for lr in LRS])


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    reason = "headless chromium not on PATH (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("SEGLAB_REQUIRE_DATA") == "1" or os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.slow
def test_report_renders_in_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",  # no clash with another chromium
            f"--screenshot={shot}",
            "--window-size=1280,900",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20  # not a blank page
    header = (np.abs(pixels - HEADER_RGB).max(axis=-1) <= 2).sum()
    assert header > 2000  # the table's header row, drawn
