"""Triton kernels for vidda. `relation_attention` fuses TA3N's temporal relation module and domain attention.
Design, compile check, CPU timings and the prepared GPU benchmark: docs/kernels.md."""
from .relation import (
    official_loop_reference,
    relation_attention,
    relation_attention_reference,
    relation_tuples,
    self_check,
    used_pairs,
)

__all__ = ["relation_tuples", "used_pairs", "relation_attention", "relation_attention_reference",
           "official_loop_reference", "self_check"]
