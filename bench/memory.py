"""Peak memory of every model on the built-in data: does each default job fit the machine?

Setup: ``python src/train.py model=M data=shapes debug=fast_dev_run`` (one train, val and test
batch; default settings otherwise: 64x64 scenes, batches of 16 / 8 (train / eval) for the
semantic models and 4 / 2 for the detectors, which take the scenes at their own size,
``data.detector_scale``) for every ``conf/model/*.yaml``, each in a fresh process on the CPU,
then the detectors (or, with ``--ddp-all``, every model) with ``trainer=ddp_cpu
++trainer.fast_dev_run=true`` (two ranks; ``debug=fast_dev_run`` would make it one process).
The environment is inherited (thread counts included); run
folders go to a temporary directory that is removed. A single-process job's figure is the
kernel's high-water mark of its resident set (``ru_maxrss`` from ``os.wait4``: exact, no
sampling). A DDP job's figure is the sum over its processes (rank 0 and the rank Lightning
starts) of each one's own high-water mark (``VmHWM``, read from ``/proc`` every 50 ms while it
lives, the last reading kept, since a rank read between fork and exec shows its parent's mark;
at least ``ru_maxrss``): an upper bound of the simultaneous total, since the ranks
need not peak at the same moment and pages they share (libraries) count once per rank.
The table also gives a DDP job's peak summed ``Pss`` (shared pages split among their users:
the memory the job takes from the machine, sampled, so a lower bound of its true peak).
The limit applies to a single-process job's peak and to a DDP job's summed ``Pss``: the sum of
the ranks' own peaks counts every page they share twice, the libraries above all (about 0.75 GiB
a process after importing torch, torchvision and Lightning), so it overstates what the job
takes from the machine (in the clean-clone CI run of 2026-11-30: 4.02 GiB against 3.35 Pss for
``maskrcnn``). The table also gives the peak of the job's summed ``RssAnon`` (sampled): the
memory its processes allocated, without the pages of files they map. A resident set's file part
depends on the page cache, not on the job. On 2026-11-30, ``unet_small``'s fast_dev_run read
1.02 GiB in this checkout's venv and 1.17 GiB in a venv just installed by ``.ci/run``, from the
same source and the same package files. Its anonymous part was the same, 579,080 / 574,188 KiB.
The whole gap was file pages (``RssFile`` 499,064 / 655,048 KiB): torch's CPU library, and the
CUDA libraries that torch's CUDA build maps even without a GPU. A page fault on a library maps
the neighbouring pages the page cache already holds, and a venv whose files were just written
has them all cached. Such pages are clean and shared, and the kernel can drop them under
pressure. Prints a table (peak GiB, Pss GiB, anonymous GiB, wall seconds, exit code) and exits
non-zero when a job fails or its judged figure reaches LIMIT_GIB; the headline is the largest
judged figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_GIB = 4.0
DETECTORS = ("maskrcnn", "panoptic_fpn")
POLL_S = 0.05


def models() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants (from each process's ``/proc/<pid>/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except OSError:  # the process ended meanwhile
                continue
            found += children
            todo += children
    return found


def status_kib(pid: int, field: str) -> int:
    """A KiB field of ``/proc/<pid>/status`` (``VmHWM``: the high-water mark of the resident
    set; ``RssAnon``: the resident pages no file backs); 0 once the process has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """``Pss`` of ``pid`` in KiB: its resident pages, each shared one divided among its users."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(model: str, trainer: str | None, out: Path) -> tuple[float, float, float, float, int]:
    """Run one job: its peak in GiB (see the module docstring), the peak of its processes'
    summed ``Pss`` in GiB (sampled; 0 for a single-process job), the peak of their summed
    ``RssAnon`` in GiB (sampled), wall seconds and exit code."""
    name = f"{model}-{trainer or 'default'}"
    command = [sys.executable, "src/train.py", f"model={model}", "data=shapes"]
    command += [f"hydra.run.dir={out / name}"]
    # debug=fast_dev_run makes a job single-process: a DDP job sets fast_dev_run itself
    command += (
        [f"trainer={trainer}", "++trainer.fast_dev_run=true"] if trainer else ["debug=fast_dev_run"]
    )
    start = time.perf_counter()
    log = (out / f"{name}.log").open("wb")
    job = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peaks: dict[int, int] = {}
    pss, anon = [0], [0]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(POLL_S):
            tree = [job.pid, *descendants(job.pid)]
            for pid in tree:
                # the latest reading, not the largest: VmHWM only grows within one address
                # space, and a rank caught between fork and exec shows its parent's mark until
                # exec starts it afresh (0: the process has gone; keep its last)
                hwm = status_kib(pid, "VmHWM")
                if hwm:
                    peaks[pid] = hwm
            anon[0] = max(anon[0], sum(status_kib(pid, "RssAnon") for pid in tree))
            if trainer:
                pss[0] = max(pss[0], sum(pss_kib(pid) for pid in tree))

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(job.pid, 0)
    done.set()
    watcher.join()
    log.close()
    job.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss: the largest of the job and its ended children, so a floor of the sum
    kib = max(usage.ru_maxrss, sum(peaks.values())) if trainer else usage.ru_maxrss
    if job.returncode != 0:
        print(f"{name} failed ({job.returncode}); its last lines:", file=sys.stderr)
        tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
    wall = time.perf_counter() - start
    return kib / 2**20, pss[0] / 2**20, anon[0] / 2**20, wall, job.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp-all", action="store_true", help="every model under ddp_cpu too")
    parser.add_argument("--models", nargs="*", help="a subset of conf/model/*.yaml")
    args = parser.parse_args()
    print(__doc__.strip().splitlines()[0])
    chosen = args.models or models()
    ddp = chosen if args.ddp_all else [m for m in chosen if m in DETECTORS]
    jobs = [(m, None) for m in chosen] + [(m, "ddp_cpu") for m in ddp]
    print(f"{len(jobs)} fast_dev_run jobs on data=shapes, limit {LIMIT_GIB} GiB each")
    print(f"{'model':<14} {'trainer':<8} {'peak GiB':>8} {'Pss GiB':>7} {'anon GiB':>8} "
          f"{'wall s':>7} {'exit':>4}  (judged: peak, or Pss for ddp_cpu)")  # fmt: skip
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seglab-memory-") as tmp:
        for model, trainer in jobs:
            gib, pss, anon, wall, code = measure(model, trainer, Path(tmp))
            rows.append((model, trainer, pss if trainer else gib, code))
            shared = f"{pss:.2f}" if pss else "-"
            print(
                f"{model:<14} {trainer or 'cpu':<8} {gib:>8.2f} {shared:>7} {anon:>8.2f} "
                f"{wall:>7.1f} {code:>4}"
            )
    bad = [r for r in rows if r[3] != 0 or r[2] >= LIMIT_GIB]
    print(f"{len(rows) - len(bad)}/{len(rows)} jobs ran under {LIMIT_GIB} GiB "
          f"({time.perf_counter() - start:.0f} s in all)")  # fmt: skip
    worst = max(rows, key=lambda r: r[2])
    print(f"memory_gib_max: {worst[2]:.2f} ({worst[0]}, {worst[1] or 'cpu'})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
