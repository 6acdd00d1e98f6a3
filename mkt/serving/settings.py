"""Settings of `mkt serve`, read from `MKT_*` environment variables like every other setting."""

from pydantic import Field, SecretStr

from mkt.settings import Settings


class ServingSettings(Settings):
    """The shared settings plus the limits, budget and intervals of the HTTP server."""

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token clients must send (env MKT_API_TOKEN); unset, the API "
        "is open. /health and /ready never ask for it.",
    )
    serve_memory_budget_mb: float = Field(
        default=2048.0,
        gt=0,
        description="Estimated MB that loaded classifiers and their embedding models may "
        "use; past it the least recently used classifiers are unloaded.",
    )
    serve_alias_check_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between checks of each loaded store's @champion alias "
        "and of which stores are still registered.",
    )
    serve_load_retry_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds before a classifier version that failed to load is tried again.",
    )
    serve_max_names: int = Field(
        default=256,
        gt=0,
        description="Most names one classify request may carry.",
    )
    serve_max_name_chars: int = Field(
        default=500,
        gt=0,
        description="Most characters one name may have.",
    )
    serve_max_top_k: int = Field(
        default=50,
        gt=0,
        description="Most candidates a classify request may ask for per name.",
    )
    serve_embedding_batch_size: int = Field(
        default=16,
        gt=0,
        description="Names of one request that the encoder embeds together. The ONNX "
        "and PyTorch encoders sort the names by length and pad each batch to its "
        "longest name, so small batches pad less. The embed stage uses "
        "MKT_EMBEDDING_BATCH_SIZE instead.",
    )
    serve_embedding_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Embeddings of recently served names kept in memory (about 1.5 KB "
        "each for all-MiniLM-L6-v2, outside the memory budget); 0 turns the cache off.",
    )
    serve_stats_flush_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between writes of serving statistics to the product database.",
    )
