"""External systems as Dagster resources, each with a local default.

Where data comes from and goes is configuration: every field left empty falls back to an
environment variable, then to a local default, resolved when a run starts (not at import):

| field | env var | default |
|---|---|---|
| ``SourceResource.root`` | ``CHEXMIX_SOURCE_ROOT`` | ``data/demo`` (made by ``make demo``) |
| ``SourceResource.layout`` | ``CHEXMIX_SOURCE_LAYOUT`` | ``mimic-cxr`` |
| ``StorageResource.root`` | ``CHEXMIX_STORAGE_ROOT`` | ``storage`` |
| ``PrivacyResource.salt`` | ``CHEXMIX_ID_SALT`` | random, kept in ``<storage>/private/id_salt`` |
| ``RayResource.address`` | ``RAY_ADDRESS`` | a local Ray started on demand |
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from cxr.catalog import CATALOG_NAME, Catalog
from cxr.privacy import SALT_ENV_VAR, Pseudonymizer, resolve_salt
from cxr.sources import LAYOUTS, ImagesCsvOptions, SourceSpec


def _env_or(value: str, env_var: str, default: str) -> str:
    return value or os.environ.get(env_var, "") or default


class StorageResource(dg.ConfigurableResource):
    """The storage root: every artifact, the DuckDB catalog and the MLflow store live under it."""

    root: str = Field(
        default="", description="Storage root directory; empty = $CHEXMIX_STORAGE_ROOT or ./storage"
    )

    @property
    def root_path(self) -> Path:
        """Absolute storage root (created on first use)."""
        path = Path(_env_or(self.root, "CHEXMIX_STORAGE_ROOT", "storage")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, *parts: str) -> Path:
        """A path under the storage root."""
        return self.root_path.joinpath(*parts)

    def catalog(self) -> Catalog:
        """The DuckDB catalog database under the storage root."""
        return Catalog(self.path(CATALOG_NAME))


class SourceResource(dg.ConfigurableResource):
    """The raw archive: where it is and which layout adapter reads it."""

    root: str = Field(
        default="", description="Archive root; empty = $CHEXMIX_SOURCE_ROOT or ./data/demo"
    )
    layout: str = Field(
        default="", description=f"One of {LAYOUTS}; empty = $CHEXMIX_SOURCE_LAYOUT or mimic-cxr"
    )
    csv_name: str = Field(default="metadata.csv", description="images-csv: the CSV file name")
    image_dir: str = Field(default="images", description="images-csv: folder of the images")
    image_column: str = Field(default="filename", description="images-csv: image file column")
    patient_column: str = Field(default="patientid", description="images-csv: patient column")
    text_column: str = Field(default="clinical_notes", description="images-csv: report column")
    view_column: str = Field(default="view", description="images-csv: view column ('' = none)")
    study_column: str = Field(
        default="", description="images-csv: study column; '' groups a patient's rows by text"
    )

    def spec(self) -> SourceSpec:
        """The resolved source specification (validates the layout name)."""
        root = Path(_env_or(self.root, "CHEXMIX_SOURCE_ROOT", "data/demo")).expanduser().resolve()
        layout = _env_or(self.layout, "CHEXMIX_SOURCE_LAYOUT", "mimic-cxr")
        if not root.is_dir():
            raise dg.Failure(
                f"source root {root} is not a directory. Set SourceResource.root or "
                "CHEXMIX_SOURCE_ROOT to your archive, or run `make data` for the demo archive."
            )
        return SourceSpec(
            root=root,
            layout=layout,
            images_csv=ImagesCsvOptions(
                csv_name=self.csv_name,
                image_dir=self.image_dir,
                image_column=self.image_column,
                patient_column=self.patient_column,
                text_column=self.text_column,
                view_column=self.view_column,
                study_column=self.study_column,
            ),
        )


class PrivacyResource(dg.ConfigurableResource):
    """The secret salt that pseudonymises ids leaving ingest."""

    salt: str = Field(
        default="",
        description=f"Id salt (>= 16 chars); empty = ${SALT_ENV_VAR} or a generated secret "
        "stored once under <storage>/private/id_salt. Use dg.EnvVar in production.",
    )

    def pseudonymizer(self, storage: StorageResource) -> Pseudonymizer:
        """Keyed hasher for this deployment."""
        explicit = self.salt or os.environ.get(SALT_ENV_VAR, "")
        return Pseudonymizer(resolve_salt(explicit or None, storage.root_path))


class RayResource(dg.ConfigurableResource):
    """Ray: a cluster at ``address``/``$RAY_ADDRESS`` (token auth), else a quiet local instance.

    Started by ``pipelines.on_ray.startup.ensure_ray``, the project's one way to start Ray.
    """

    address: str = Field(default="", description="Ray address; empty = $RAY_ADDRESS or local")
    num_cpus: int = Field(default=0, description="CPUs of a local Ray; 0 = all of this machine")

    def ensure_started(self, min_cpus: int = 1) -> None:
        """Connect to (or start) Ray once per process; a local Ray gets >= ``min_cpus`` CPUs."""
        from pipelines.on_ray.startup import ensure_ray

        ensure_ray(self.address or None, num_cpus=self.num_cpus, min_cpus=min_cpus)


#: Tracking-URI schemes of a database store used without a tracking server.
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def use_tracking_uri(uri: str) -> None:
    """Point MLflow at ``uri`` for this process WITHOUT exporting it.

    ``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which this resource reads
    as the user's choice: a later run against another storage root in the same process (the
    evaluate CLI, tests) would then log into the first root's store. The variable is restored.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking: a local sqlite store + artifact folder under the storage root by default."""

    tracking_uri: str = Field(
        default="",
        description="Tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///<storage>/mlflow/"
        "mlflow.db. With a database URI (sqlite, postgresql, ...) new experiments keep their "
        "artifacts in <storage>/mlflow/artifacts; a tracking server (http[s]://) decides itself",
    )
    experiment: str = Field(default="chexmix", description="Experiment name")

    def resolved_uri(self, storage: StorageResource) -> str:
        """The tracking URI this deployment uses."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri:
            return uri
        folder = storage.path("mlflow")
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    def experiment_id(self, storage: StorageResource) -> str:
        """Create (once) and return the experiment, with a local artifact root by default."""
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = self.resolved_uri(storage)
        use_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = None
        if uri.split(":", 1)[0].split("+", 1)[0] in _DATABASE_SCHEMES:
            # A database store without a server keeps artifacts in ./mlruns of whichever
            # process logs first (the Dagster daemon's cwd, a notebook's): keep them with the
            # rest of the outputs instead. A tracking server decides for itself.
            artifacts = storage.path("mlflow", "artifacts").as_uri()
        try:
            return mlflow.create_experiment(self.experiment, artifact_location=artifacts)
        except Exception:  # created concurrently by another run
            experiment = mlflow.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, each resolved from env vars / local defaults."""
    return {
        "source": SourceResource(),
        "storage": StorageResource(),
        "privacy": PrivacyResource(),
        "ray": RayResource(),
        "mlflow_tracking": MLflowResource(),
    }
