"""Thin Dagster asset modules, one per pipeline stage, named for what they produce."""
