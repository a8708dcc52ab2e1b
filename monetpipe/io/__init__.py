"""Reading and writing: images with their geometry, dataset.json in its three dialects, atomic files."""
