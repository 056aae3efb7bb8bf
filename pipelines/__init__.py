"""The Dagster code location of the CheXmix pipeline."""
