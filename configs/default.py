"""The reference config: `jdr.config.train_config()` documents every field. Overlays start from it."""

from jdr.config import train_config


def get_config():
    return train_config()
