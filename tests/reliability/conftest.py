"""Reliability tests reuse the integration fixtures (tiny checkpoint, inference mode)."""
from integration.conftest import _inference_mode, negative, tiny  # noqa: F401
