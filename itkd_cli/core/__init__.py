"""Shared building blocks: errors, typed tensors, atomic file writes. Imports nothing of ours."""

from itkd_cli.core.errors import ItkdError

__all__ = ["ItkdError"]
