"""Settings and named choices that manifests record: pydantic models and literals, torch-free.

The bottom layer: every other package may import it, it imports none of them (``errors`` aside).
"""
