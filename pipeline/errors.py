"""Error types shared by torch-free and computing modules (no heavy imports here)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting or input, named by its field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelError(ValueError):
    """A model specification or checkpoint that cannot be used, with the reason."""
