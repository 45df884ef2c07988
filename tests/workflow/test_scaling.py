"""Scaling out with existing engines: a sweep through the submitit launcher, two "nodes" under
torchrun, and the SLURM launcher config. (DDP jobs in a multirun: test_sweeps.py.)"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import DDP_TINY, ROOT, compose_config, run_cli

from seglab.eval import evaluate
from seglab.utils.sweep import SUMMARY_CSV

TINY = [
    "trainer.max_epochs=1",
    "data.num_samples={train: 8, val: 4, test: 2}",
    "data.image_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "model.net.depth=2",
    "callbacks.rich_progress_bar=null",
    "logger=csv",
]


def job_folders(logs: Path) -> tuple[Path, list[str]]:
    """The only sweep folder under ``logs`` and the names of its job folders."""
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    return sweep, sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / SUMMARY_CSV, newline="") as f:
        return list(csv.DictReader(f))


def test_slurm_launcher_config_maps_the_top_level_keys(tmp_path):
    cfg = compose_config(
        "train",
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "slurm.gpus=4",
            "slurm.partition=gpu",
            "slurm.time_min=90",
        ],
        tmp_path,
        quick=False,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 90)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, -1)


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"paths.log_dir={logs}",
        "trainer=cpu",
        *TINY,
        "optimizer.lr=0.01,0.003",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, jobs = job_folders(logs)
    assert jobs == ["0", "1"]
    assert (sweep / ".submitit").is_dir()  # the jobs did go through submitit
    rows = summary_rows(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1"]
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert row["status"] == "completed" and float(row["best"]) == metrics["monitor"]["best"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_nodes_one_run_folder(tmp_path, ddp_cpu_run):
    """Two torchrun "nodes" of one process each train one run, in the one folder both are given.

    "Equal to a single process", honestly: training on 2 ranks is not the same computation as
    on 1 (each rank has its own batch-norm statistics and half the batches), so what is
    compared is the evaluation: the best checkpoint validated by the 2 nodes (5 images, 3 and 2
    per rank, none repeated) must score what ``evaluate`` (eval.py) scores on it in one process.
    The training itself is compared with the same 2 ranks started on one machine
    (``trainer=ddp_cpu``, the session's shared run of the same job): every fit and val metric
    must agree.
    """
    logs = tmp_path / "logs"
    run_dir = logs / "two_nodes"
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "torch.distributed.run"),
                *("--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}"),
                *("--master_addr=127.0.0.1", f"--master_port={port}"),
                str(ROOT / "src" / "train.py"),
                *DDP_TINY,
                *("trainer.devices=1", "trainer.num_nodes=2"),
                f"hydra.run.dir={run_dir}",
                f"paths.log_dir={logs}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, output[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output  # a 2-process world

    assert [p.name for p in logs.iterdir()] == ["two_nodes"]  # nothing else
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["best_checkpoint"].startswith(str(run_dir))

    # the same 2-rank training started on one machine (trainer=ddp_cpu, Lightning's own
    # launcher): the multi-node launch changes nothing of the computation
    local = json.loads((ddp_cpu_run.run / "metrics.json").read_text())
    for stage in ("fit", "val"):
        assert local[stage].keys() == trained[stage].keys()
        for key, value in local[stage].items():
            assert trained[stage][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (stage, key)

    ckpt = f"ckpt_path={trained['best_checkpoint']}"
    single = evaluate(compose_config("eval", [ckpt, "trainer=cpu"], tmp_path / "single"))[0]["val"]
    two_nodes = trained["val"]
    assert single.keys() == two_nodes.keys() and "val/miou" in single
    for key, value in single.items():
        assert two_nodes[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
