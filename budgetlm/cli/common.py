"""What the command modules share: the optional config argument and the exit codes."""

from __future__ import annotations

from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "split_config_arg"]


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The config file is optional: a first argument with '=' is already an override."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides
