"""Stage 3: segment volumes with trained models (``monet_predict``)."""
