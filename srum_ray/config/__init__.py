"""Typed configuration loaded from YAML (see :mod:`srum_ray.config.schema`)."""

from srum_ray.config.load import ConfigError, config_to_dict, load_config
from srum_ray.config.schema import SrumConfig

__all__ = ["ConfigError", "SrumConfig", "config_to_dict", "load_config"]
