"""python src/predict.py --help: see conf/predict.yaml and the README."""

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: `--help` then answers at once, without loading torch
    from seglab.predict import predict
    from seglab.utils.console import quiet_known_noise

    quiet_known_noise()
    predict(cfg)


if __name__ == "__main__":
    main()
