"""Artifacts: zarr v3 groups with a pydantic manifest, written atomically and checked on read; one
module per kind (split, model, predictions, pseudolabels, metrics) holds its manifest, its arrays
and its reader/writer."""
