"""Federated training on Flower (``monet_federated``): sites train on their own cases, only weights travel.

Library use::

    from monetpipe.federated import FederatedConfig, run_federated
    run_federated("Task04", "monet", fold=0, settings=FederatedConfig(sites=3, rounds=10))

Needs the ``federated`` extra (``pip install 'monetpipe[federated]'``, i.e. Flower); the rest of
monetpipe imports and runs without it. See docs/federated.md. Names are imported on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FederatedConfig": "monetpipe.federated.settings",
    "FederatedResult": "monetpipe.federated.api",
    "run_federated": "monetpipe.federated.api",
    "split_sites": "monetpipe.federated.sites",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monetpipe.federated' has no attribute {name!r}")
