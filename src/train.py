"""python src/train.py --help: see conf/train.yaml and the README."""

import hydra
from omegaconf import DictConfig

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
