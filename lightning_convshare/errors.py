"""Exceptions for bad input. Each says what was wrong, with the values, and what would work.

The CLI prints these as one clean message (no stack trace) and exits with status 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["ConvShareError", "ConfigError", "GeometryError", "DataError", "UnknownNameError", "UnsafeCheckpointError"]


class ConvShareError(Exception):
    """Base class of every user-facing error of lightning_convshare."""


class ConfigError(ConvShareError, ValueError):
    """A configuration value or override is invalid."""


class GeometryError(ConvShareError, ValueError):
    """A ConvShare layer cannot produce its output features with the requested geometry."""


class DataError(ConvShareError, ValueError):
    """A dataset is missing or malformed."""


class UnknownNameError(ConvShareError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class UnsafeCheckpointError(ConfigError):
    """A file would need arbitrary unpickling (which can run code) and the user has not said they trust it."""
