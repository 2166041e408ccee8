"""The KV-cache argument of a Hugging Face model, whose name changed within transformers 5.x."""

from __future__ import annotations

import inspect


def cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x): the name of the KV-cache argument of
    the model's ``forward`` and ``generate`` and of the output field that returns it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
