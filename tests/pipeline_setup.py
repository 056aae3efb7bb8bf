"""Set-up shared by the integration tests: local resources and a tiny data-graph run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.resources import (
    MLflowResource,
    PrivacyResource,
    RayResource,
    SourceResource,
    StorageResource,
)


def local_resources(
    archive: Path, storage: Path, salt: str, ray: RayResource | None = None
) -> dict[str, Any]:
    """The code location's resources for a MIMIC-CXR-layout archive and a storage root.

    ``ray`` defaults to a local Ray with 2 CPUs.
    """
    return {
        "source": SourceResource(root=str(archive), layout="mimic-cxr"),
        "storage": StorageResource(root=str(storage)),
        "privacy": PrivacyResource(salt=salt),
        "ray": ray or RayResource(num_cpus=2),
        "mlflow_tracking": MLflowResource(),
    }


def tiny_data_ops(images_per_shard: int, image_size: int = 64) -> dict[str, Any]:
    """Run-config ``ops`` for the data graph in this process (no Ray), tokenizers minimal."""
    return {
        "cxr_images": {
            "config": {
                "use_ray": False,
                "images_per_shard": images_per_shard,
                "image_size": image_size,
            }
        },
        "image_tokenizer": {
            "config": {
                "preset": "debug",
                "steps": 2,
                "batch_size": 4,
                "real_check_dir": "",
                "max_val_images": 4,
            }
        },
        "text_tokenizer": {"config": {"vocab_size": 300}},
        "finding_labels": {"config": {"openi_reports_dir": ""}},
        "token_shards": {"config": {"use_ray": False}},
    }
