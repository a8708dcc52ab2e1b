"""Stage 3: segment volumes with trained models (``monet_predict``).

``predict_folder(input_dir, output_dir, model_folder, ...)`` is what the command runs; ``predict_files``
does the same with networks already in memory. Both are imported lazily, so ``monet_predict --help``
stays instant.
"""

from __future__ import annotations

__all__ = ["PredictionSummary", "predict_files", "predict_folder"]


def __getattr__(name: str):
    if name in __all__:
        from monetpipe.inference import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
