"""python src/train.py --help: see conf/train.yaml and the README."""

import sys

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.train import train
from seglab.utils.resume import resume_arguments
from seglab.utils.sweep import job_environment, pin_spawned_ranks_to_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the monitored metric's best value, the objective of an Optuna sweep."""
    pin_spawned_ranks_to_job()
    with job_environment():
        metrics, _ = train(cfg)
    return metrics["monitor"]["best"]


if __name__ == "__main__":
    try:  # resume=RUN_DIR / ckpt_path=last: that run's command line, in its folder
        sys.argv = resume_arguments(sys.argv)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"Error: {err}")
    main()
