"""seglab: Lightning + Hydra experiments for CNN image segmentation."""

__version__ = "0.1.0"

from seglab.utils.config import register_resolvers as _register_resolvers

_register_resolvers()
