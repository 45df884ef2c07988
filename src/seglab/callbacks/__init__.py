"""Lightning callbacks of seglab."""

from seglab.callbacks.config import CONFIG_KEY, EmbedConfig

__all__ = ["CONFIG_KEY", "EmbedConfig"]
