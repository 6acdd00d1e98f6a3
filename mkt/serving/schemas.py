"""Request and response bodies of the HTTP API, as they appear in the OpenAPI schema."""

from datetime import datetime

from pydantic import BaseModel, Field


class ClassifyRequest(BaseModel):
    """Product names to classify with a store's champion."""

    names: list[str] = Field(
        min_length=1,
        description="Product names; the server limits their count and length.",
        examples=[["apple iphone 8 plus 64gb silver"]],
    )
    top_k: int = Field(default=3, ge=1, description="Candidates returned per name.")


class CandidateResult(BaseModel):
    """One category proposed for a name, with its share of the neighbours' vote."""

    category_id: str
    category_path: str = Field(
        description="Category names from the root, ' > ' between."
    )
    score: float


class NameResult(BaseModel):
    """The classifier's result for one name."""

    name: str
    category_id: str | None = Field(description="Best category; null when abstained.")
    category_path: str | None = Field(
        description="Best category's path; when abstained, the deepest confident "
        "ancestor's path, or null."
    )
    score: float = Field(description="Score of the best candidate, from 0 to 1.")
    is_abstained: bool = Field(
        description="True when the best score is under the store's abstain threshold; "
        "the candidates are still returned."
    )
    candidates: list[CandidateResult]


class ClassifyResponse(BaseModel):
    """Results for every requested name, in request order."""

    store_id: str
    classifier_version: str
    results: list[NameResult]


class StoreState(BaseModel):
    """A registered store and the classifier this server loaded for it."""

    store_id: str
    champion_version: str | None = Field(
        description="Version the @champion alias points at; null when it has none."
    )
    loaded_version: str | None = Field(
        description="Version this server classifies with; null until the first request "
        "or after it was unloaded."
    )
    loaded_at: datetime | None
    memory_bytes: int | None = Field(
        description="Estimated memory of the loaded classifier, without the embedding model."
    )
    failed_version: str | None = Field(
        description="Last version that failed to load and has not loaded since."
    )
    load_error: str | None


class StoresResponse(BaseModel):
    """Every registered store and the server's memory use."""

    stores: list[StoreState]
    memory_bytes: int = Field(
        description="Estimated memory of the loaded classifiers and embedding models."
    )
    memory_budget_bytes: int


class HealthResponse(BaseModel):
    """Whether the server is up, or ready to serve requests."""

    status: str
