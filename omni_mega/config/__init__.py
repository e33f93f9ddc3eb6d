"""Typed configuration: dataclasses, YAML loading with overrides, validation."""

from omni_mega.config.load import apply_overrides, from_dict, load_config, to_dict
from omni_mega.config.schema import (
    ConfigError,
    ConnectorConfig,
    ContrastiveConfig,
    DataConfig,
    LLMConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RopeScalingConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
    ViTConfig,
)
from omni_mega.config.validate import validate

__all__ = [
    "ConfigError", "ConnectorConfig", "ContrastiveConfig", "DataConfig", "LLMConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
    "RopeScalingConfig", "RunConfig", "StageConfig", "TrainConfig", "ViTConfig", "apply_overrides", "from_dict", "load_config", "to_dict",
    "validate",
]
