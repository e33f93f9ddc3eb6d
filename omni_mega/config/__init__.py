"""Typed configuration: dataclasses, YAML loading with overrides, validation."""

from omni_mega.config.checks import ConfigError
from omni_mega.config.load import apply_overrides, from_dict, load_config, to_dict
from omni_mega.config.model import (ConnectorConfig, ContrastiveConfig, LLMConfig, ModelConfig, RopeScalingConfig,
                                    ViTConfig)
from omni_mega.config.schema import DataConfig, OptimConfig, ParallelConfig, RunConfig, TrainConfig
from omni_mega.config.stage import StageConfig
from omni_mega.config.validate import validate

__all__ = [
    "ConfigError", "ConnectorConfig", "ContrastiveConfig", "DataConfig", "LLMConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
    "RopeScalingConfig", "RunConfig", "StageConfig", "TrainConfig", "ViTConfig", "apply_overrides", "from_dict", "load_config", "to_dict",
    "validate",
]
