"""Datasets: the readers (one per format), the synthetic generator, the table of names, the ingest
into a split, and the image sources that prediction reads."""
