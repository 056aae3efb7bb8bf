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
SPLITS = ("curation", "splits.parquet")
REPORT_SECTIONS = ("curation", "report_sections.parquet")
FINDING_LABELS = ("curation", "finding_labels.parquet")
TEXT_TOKENIZER_DIR = ("tokenizers", "text")
IMAGE_TOKENIZER_DIR = ("tokenizers", "image")
VOCABULARY = ("tokenizers", "vocabulary.json")
TOKENS_DIR = ("tokens",)
TOKENS_PLAN = ("private", "tokens_plan.parquet")
STAGE1_POINTER = ("checkpoints", "stage1", "latest.json")
STAGE2_POINTER = ("checkpoints", "stage2", "latest.json")
STAGE1_CONTINUED_POINTER = ("checkpoints", "stage1-continued", "latest.json")
#: The ``latest.json`` pointer each training asset writes (its folder names its checkpoints).
TRAINING_POINTERS = {
    "stage1_checkpoint": STAGE1_POINTER,
    "stage2_checkpoint": STAGE2_POINTER,
    "stage1_continued_checkpoint": STAGE1_CONTINUED_POINTER,
}
