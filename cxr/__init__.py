"""Plain-Python core of the CheXmix data pipeline.

DICOM/raster decoding, source layouts, the synthetic demo archive, privacy hashing, Parquet shard
writing, report curation and the DuckDB catalog. Nothing here imports dagster; the Dagster assets
in ``assets/`` are thin wrappers around it.
"""
