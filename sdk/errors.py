"""Typed errors of the edgekit API: every failure a user can cause or meet is one of these."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""

    #: process exit status the CLI uses for this error (2: bad usage or input, 1: runtime failure)
    exit_code = 1


class InputError(EdgekitError, ValueError):
    """Bad input to a call: missing or unknown tensor names, wrong rank, shape or dtype, bad arguments."""

    exit_code = 2


class ModelLoadError(EdgekitError):
    """A model file or bundle cannot be loaded: missing, corrupt, truncated, wrong format, bad checksum."""

    exit_code = 2


class RunError(EdgekitError):
    """A backend failed while running a model (the message names the backend and its error)."""


class BackendUnavailable(EdgekitError):
    """A backend cannot run here: its package is missing or the platform cannot run it."""


class MissingExtraError(BackendUnavailable, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ConversionError(EdgekitError):
    """A conversion, quantization, pruning or export step failed."""


class UnsupportedOpError(ConversionError):
    """An operator cannot be handled by a target; the message names the node and op type."""


class ValidationError(ConversionError):
    """An exported variant does not match its source within the stated tolerance."""


class OutputExistsError(EdgekitError, FileExistsError):
    """An output path exists and ``force`` was not given."""

    exit_code = 2


class DeadlineError(EdgekitError):
    """A run could not meet its latency budget and ``strict=True`` was asked for."""


class BoardError(InputError):
    """An unknown board name or an unusable board profile."""
