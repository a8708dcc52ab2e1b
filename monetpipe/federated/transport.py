"""Weights as Flower records, and the size of what Flower sends.

Flower (1.42) sends a message as a tree of content-addressed objects (the message, its record dict,
each record, each array, and arrays above 5 MiB in chunks). :func:`message_bytes` adds up the bytes
of exactly those serialized objects (``deflate()``, Flower's own encoder), so ``bytes_up`` /
``bytes_down`` in ``federated_log.csv`` are the payload Flower moves for a message, not a count of
parameters. HTTP framing and TLS are not included.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def state_to_arrays(state: dict[str, torch.Tensor], dtype: str = "float32") -> ArrayRecord:
    """Floating tensors -> an :class:`ArrayRecord` of NumPy arrays in ``dtype`` (same key order)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v.detach().cpu().numpy().astype(dtype))) for k, v in state.items()}
    )


def arrays_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An :class:`ArrayRecord` (float16 or float32) -> float32 tensors."""
    return {k: torch.from_numpy(np.asarray(a.numpy(), dtype=np.float32).copy()) for k, a in record.items()}


def as_float32(record: ArrayRecord) -> ArrayRecord:
    """The same arrays in float32: updates are averaged in float32 whatever dtype they travelled in."""
    return ArrayRecord({k: Array(np.asarray(a.numpy(), dtype=np.float32)) for k, a in record.items()})


def message_bytes(message: Message) -> int:
    """Bytes of every object Flower serializes to transfer ``message`` (its whole object tree)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of the serialized objects of one record (the weights alone, without the message around them)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())
