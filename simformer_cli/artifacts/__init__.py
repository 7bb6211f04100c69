"""Artifacts: zarr v3 groups with a pydantic manifest, written atomically and checked on read."""
