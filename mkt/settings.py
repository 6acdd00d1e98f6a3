"""Settings shared by every mkt command and flow, read from `MKT_*` environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where mkt keeps its data and which services it talks to."""

    model_config = SettingsConfigDict(env_prefix="MKT_", extra="ignore")

    home: Path = Field(
        default=Path("~/.mkt"),
        description="Data directory holding the databases, caches, snapshots and MLflow files.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the product database; default: SQLite file HOME/mkt.db.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI; default: SQLite file HOME/mlflow.db.",
    )
    sqlite_busy_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a SQLite writer waits for a lock before failing.",
    )
    embedding_batch_size: int = Field(
        default=64,
        gt=0,
        description="Names encoded per batch by the embedding model.",
    )
    sync_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Deployment writes `mkt sync` sends to Prefect at once. Keep 1 for a Prefect "
            "server on SQLite, where concurrent writes wait on the database lock and the "
            "client's retries; raise it for a server on PostgreSQL."
        ),
    )

    cold_dir: Path | None = Field(
        default=None,
        description="Folder of the cold SQLite tier (cheap disk); unset: no cold tier.",
    )
    hot_tablespace: str | None = Field(
        default=None, description="PostgreSQL tablespace of current products."
    )
    cold_tablespace: str | None = Field(
        default=None, description="PostgreSQL tablespace of archived products."
    )
    archive_after_days: float = Field(
        default=90.0,
        gt=0,
        description="Days since a product was last seen before archive moves it cold.",
    )

    @property
    def home_dir(self) -> Path:
        """The data directory with `~` expanded, made absolute."""
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The product database URL, defaulting to a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.home_dir / 'mkt.db'}"

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        """The MLflow URI, defaulting to a SQLite file in the data directory."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Folder of MLflow artifacts when MLflow runs on the local default."""
        return self.home_dir / "mlartifacts"

    @property
    def embedding_cache_dir(self) -> Path:
        """Folder of the embedding caches, one SQLite file per embedding model."""
        return self.home_dir / "cache" / "embeddings"

    @property
    def encoder_export_dir(self) -> Path:
        """Folder of the ONNX exports of embedding models, one folder per encoder."""
        return self.home_dir / "cache" / "encoders"

    @property
    def fine_tuned_encoder_dir(self) -> Path:
        """Folder of fine-tuned encoders installed from classifiers, one per content hash."""
        return self.home_dir / "cache" / "fine-tuned"

    def store_dir(self, store_id: str) -> Path:
        """Folder of one store's training snapshot and its embeddings."""
        return self.home_dir / "stores" / store_id

    @property
    def cold_database_path(self) -> Path | None:
        """The cold SQLite tier's file, or None when no cold folder is set."""
        if self.cold_dir is None:
            return None
        return self.cold_dir.expanduser().resolve() / "mkt-cold.db"

    @property
    def has_tiers(self) -> bool:
        """Whether a cold tier is configured for the product database."""
        if self.resolved_database_url.startswith("sqlite"):
            return self.cold_dir is not None
        return bool(self.hot_tablespace and self.cold_tablespace)

    def ensure_home(self) -> Path:
        """Create the data directory if needed and return it."""
        self.home_dir.mkdir(parents=True, exist_ok=True)
        return self.home_dir
