"""The batch-spec language (see ``grammar.batch_spec`` for the grammar)."""

from .batch_spec import (
    MAX_REQUESTS,
    MAX_VALUE,
    SPEC_DECODE_MAX_Q,
    BatchRequest,
    BatchSpecError,
    format_batch_spec,
    get_batch_stats,
    get_batch_type,
    parse_batch_spec,
    repeat_batch_spec,
    to_batch_spec,
)
from .ranges import MAX_COMBINATIONS, generate_batch_specs_from_ranges

__all__ = [
    "MAX_COMBINATIONS",
    "MAX_REQUESTS",
    "MAX_VALUE",
    "SPEC_DECODE_MAX_Q",
    "BatchRequest",
    "BatchSpecError",
    "format_batch_spec",
    "generate_batch_specs_from_ranges",
    "get_batch_stats",
    "get_batch_type",
    "parse_batch_spec",
    "repeat_batch_spec",
    "to_batch_spec",
]
