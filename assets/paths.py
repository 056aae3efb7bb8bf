"""Deterministic artifact locations under the storage root (one place, so assets agree)."""

SOURCE_MANIFEST = ("source", "manifest.parquet")
SOURCE_LOCATIONS = ("private", "locations.parquet")
STUDIES_DIR = ("studies",)
STUDIES = ("studies", "studies.parquet")
STUDY_IMAGES = ("studies", "study_images.parquet")
STUDIES_REJECTED = ("studies", "rejected.parquet")
IMAGES_DIR = ("images",)
IMAGES_PLAN = ("private", "images_plan.parquet")
QUARANTINE = ("quarantine", "ingest_quarantine.parquet")
PREVIEWS_DIR = ("previews",)
