"""Models by name: the attention dimensions of the models the suite ships, or those read from a ``config.json``.

``--model NAME`` (YAML ``model.name``) gives a study a model's attention dimensions; explicit dimensions given
beside it override them (``--num-q-heads 8`` emulates tensor parallelism of 8 on Llama-3-70B's 64 heads). A
model is of one family: a standard (GQA) model has no MLA dimensions, and the other way round. Nothing is fetched:
a name is one of ``MODELS``, anything else must be a path to a local ``config.json`` in Hugging Face's spelling
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size``; MLA: ``kv_lora_rank``,
``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``). The record names the model as it was given.

Only what one attention layer is set: heads and head sizes. The layer count, block size, dtypes and cache
dtype stay the study's.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

ATTENTION, MLA = "attention", "mla"
FAMILY_WORDS = {ATTENTION: "standard-attention", MLA: "MLA"}

_MLA_DIMS = {"num_q_heads": 128, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
             "v_head_dim": 128}


@dataclass(frozen=True)
class Model:
    name: str
    family: str
    dims: Mapping[str, int]  # shape field -> value, the fields of ``shapes.AttentionShape`` / ``MLAShape``


# From each model's published config.json.
MODELS: dict[str, Model] = {m.name: m for m in (
    Model("llama-3-8b", ATTENTION, {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128}),
    Model("llama-3-70b", ATTENTION, {"num_q_heads": 64, "num_kv_heads": 8, "head_dim": 128}),
    Model("qwen2.5-7b", ATTENTION, {"num_q_heads": 28, "num_kv_heads": 4, "head_dim": 128}),
    Model("qwen3-32b", ATTENTION, {"num_q_heads": 64, "num_kv_heads": 8, "head_dim": 128}),
    Model("deepseek-v3", MLA, _MLA_DIMS),
    Model("deepseek-v3.2", MLA, _MLA_DIMS),
    Model("glm-5", MLA, {"num_q_heads": 64, "kv_lora_rank": 512, "qk_nope_head_dim": 192, "qk_rope_head_dim": 64,
                         "v_head_dim": 256}),
)}
# every dimension a model sets: a model given on the command line replaces these of the study file
DIMENSIONS = frozenset(k for m in MODELS.values() for k in m.dims) | {"head_dim", "num_kv_heads"}


class ModelError(ValueError):
    """Why a model reference is refused; the caller prefixes the flag or the YAML key."""


def lookup(reference: str) -> Model:
    """The model ``reference`` names: a shipped name (any case) or a path to a config.json."""
    shipped = MODELS.get(reference.strip().lower())
    if shipped is not None:
        return shipped
    path = Path(reference)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelError(f"{reference!r} is neither a model the suite ships ({', '.join(MODELS)}) nor a config.json "
                         f"(nothing is fetched from a hub)")
    return _from_config(str(path.resolve()), reference)


@functools.lru_cache(maxsize=None)
def _from_config(path: str, reference: str) -> Model:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{reference}: cannot read it as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{reference}: the top level is not a JSON object")
    if "num_attention_heads" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # a multimodal model's language model

    def integer(key: str, default: Any = None) -> int:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{reference}: key {key!r} is {value!r}, expected a positive integer")
        return value

    heads = integer("num_attention_heads")
    if config.get("kv_lora_rank") is not None:
        dims = {"num_q_heads": heads, **{k: integer(k) for k in ("kv_lora_rank", "qk_nope_head_dim",
                                                                  "qk_rope_head_dim", "v_head_dim")}}
        return Model(reference, MLA, dims)
    if config.get("head_dim") is not None:
        head_dim = integer("head_dim")
    else:
        hidden = integer("hidden_size")
        if hidden % heads:
            raise ModelError(f"{reference}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}, "
                             f"and there is no head_dim")
        head_dim = hidden // heads
    return Model(reference, ATTENTION, {"num_q_heads": heads, "num_kv_heads": integer("num_key_value_heads", heads),
                                        "head_dim": head_dim})


def dimensions(reference: str, family: str) -> dict[str, int]:
    """The dimensions ``reference`` gives a layer of ``family``; a ModelError when it is a model of the other."""
    model = lookup(reference)
    if model.family != family:
        raise ModelError(f"{reference!r} is a {FAMILY_WORDS[model.family]} model: it has no "
                         f"{FAMILY_WORDS[family]} dimensions")
    return dict(model.dims)
