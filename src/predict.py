"""python src/predict.py --help: see conf/predict.yaml and the README."""

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.predict import predict
from seglab.utils.console import quiet_known_noise


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    quiet_known_noise()
    predict(cfg)


if __name__ == "__main__":
    main()
