"""python src/export.py --help: see conf/export.yaml and the README."""

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.utils.failure import reports_errors, run_entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@reports_errors
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: `--help` then answers at once, without loading torch
    from seglab.export import export
    from seglab.utils.console import quiet_known_noise

    quiet_known_noise()
    export(cfg)


if __name__ == "__main__":
    run_entry(main)  # an error: its message as the last line, its traceback in the run's log
