"""Rotary embedding frequencies, with the rope scaling variants of the Llama family, as transformers computes them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mistralrs_torch._errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The rope_scaling types this implementation computes ("default" is no scaling).
ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> torch.Tensor:
    """inv_freq (head_dim / 2,) float32 for ``rotary_embedding``: theta ** (-2i / head_dim), then scaled.

    ``scaling`` is a config's ``rope_scaling``: None, {"rope_type": "linear", "factor": f} (positions divided
    by f) or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (Llama 3.1's frequency-dependent scaling).
    """
    import torch

    if head_dim <= 0 or head_dim % 2:
        raise ConfigError(f"rotary head size {head_dim} must be a positive even number")
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0):
        raise ConfigError(f"rope_theta={theta!r} must be a finite number > 0")
    # As transformers: exponents in int64, then float, so the values match its own to the bit.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = "default" if not scaling else str(scaling.get("rope_type", scaling.get("type", "default")))
    if kind == "default":
        return inv_freq
    assert scaling is not None  # without it the kind is "default"
    factor = _number(scaling, "factor", kind)
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low = _number(scaling, "low_freq_factor", kind)
        high = _number(scaling, "high_freq_factor", kind)
        original = _number(scaling, "original_max_position_embeddings", kind)
        low_wavelen, high_wavelen = original / low, original / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ConfigError(f"rope_scaling type {kind!r} is not supported: supported types are {', '.join(ROPE_TYPES)}")


def _number(scaling: Mapping[str, Any], key: str, kind: str) -> float:
    value = scaling.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"rope_scaling of type {kind!r} needs {key} as a number > 0, got {value!r}")
    return float(value)
