"""python src/train.py --help: see conf/train.yaml and the README."""

import sys

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.train import train
from seglab.utils.failure import reports_errors, run_entry
from seglab.utils.resume import resume_arguments
from seglab.utils.sweep import job_environment, pin_spawned_ranks_to_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@reports_errors
def main(cfg: DictConfig) -> float | None:
    """Train; return the monitored metric's best value, the objective of an Optuna sweep."""
    pin_spawned_ranks_to_job()
    with job_environment():
        metrics, _ = train(cfg)
    return metrics["monitor"]["best"]


def resume_or_start() -> None:
    """``resume=RUN_DIR`` / ``ckpt_path=last``: that run's command line, in its folder; then
    ``main``."""
    sys.argv = resume_arguments(sys.argv)
    main()


if __name__ == "__main__":
    run_entry(resume_or_start)  # an error: its message as the last line, its traceback in the log
