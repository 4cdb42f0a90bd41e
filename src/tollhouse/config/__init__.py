"""The config file: schema, loading, env interpolation, and readable validation errors."""

from tollhouse.config.loader import ConfigError, load_config, parse_config
from tollhouse.config.schema import BackendConfig, Config, ModelConfig, Prices, ServerConfig

__all__ = [
    "BackendConfig",
    "Config",
    "ConfigError",
    "ModelConfig",
    "Prices",
    "ServerConfig",
    "load_config",
    "parse_config",
]
