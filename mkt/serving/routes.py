"""Routes of the HTTP API: health, readiness, stores, classification and metrics."""

import secrets
import time
from typing import TYPE_CHECKING

import faiss
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from mkt.catalog import list_store_rows
from mkt.classifier import Prediction
from mkt.label_map import remap_prediction
from mkt.serving.loading import LoadedClassifier, RegistryUnavailable
from mkt.serving.schemas import (
    CandidateResult,
    ClassifyRequest,
    ClassifyResponse,
    HealthResponse,
    NameResult,
    StoresResponse,
    StoreState,
)
from mkt.titles import clean_title

if TYPE_CHECKING:
    from mkt.serving.app import ServingState

# A request searches a few dozen vectors, too little work to split over cores. More
# threads gain little on idle cores, and their idle OpenMP threads spin, which takes
# cores from ONNX Runtime and the other request threads.
SEARCH_THREAD_COUNT = 1

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="The token set by MKT_API_TOKEN or `mkt serve --token`, when one is set.",
)


def serving_state(request: Request) -> "ServingState":
    """Return the state of the app handling the request."""
    return request.app.state.serving


def require_token(
    state: "ServingState" = Depends(serving_state),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> None:
    """Reject the request with 401 unless it carries the server's bearer token."""
    if state.token is None:
        return
    sent = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(sent.encode(), state.token.encode()):
        state.metrics.rejected.labels("unauthorized").inc()
        raise HTTPException(
            status_code=401,
            detail="Missing or invalid bearer token. Send the header "
            "'Authorization: Bearer TOKEN' with the token the server was started with "
            "(MKT_API_TOKEN or mkt serve --token).",
            headers={"WWW-Authenticate": "Bearer"},
        )


open_router = APIRouter(tags=["health"])
protected_router = APIRouter(dependencies=[Depends(require_token)])


@open_router.get("/health")
async def health() -> HealthResponse:
    """Report that the server process is up."""
    return HealthResponse(status="ok")


@open_router.get("/ready", responses={503: {"description": "A dependency is down."}})
def ready(state: "ServingState" = Depends(serving_state)) -> HealthResponse:
    """Report whether the product database and the MLflow registry can be read."""
    problems = []
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        problems.append(f"product database could not be read: {exc}")
    try:
        state.reader.check()
    except RegistryUnavailable as exc:
        problems.append(str(exc))
    if problems:
        raise HTTPException(status_code=503, detail="Not ready: " + "; ".join(problems))
    return HealthResponse(status="ready")


@protected_router.get("/stores", tags=["stores"])
def list_stores(state: "ServingState" = Depends(serving_state)) -> StoresResponse:
    """List the registered stores with their champion and the version served here."""
    store_ids = [row.store_id for row in list_store_rows(state.engine)]
    champions = state.reader.champion_versions(store_ids)
    slots = {slot.store_id: slot for slot in state.pool.slots()}

    stores = []
    for store_id in store_ids:
        slot = slots.get(store_id)
        loaded = slot.loaded if slot is not None else None
        stores.append(
            StoreState(
                store_id=store_id,
                champion_version=champions.get(store_id),
                loaded_version=loaded.version if loaded else None,
                loaded_at=loaded.loaded_at if loaded else None,
                memory_bytes=loaded.size_bytes if loaded else None,
                failed_version=slot.failed_version if slot else None,
                load_error=slot.load_error if slot else None,
            )
        )
    return StoresResponse(
        stores=stores,
        memory_bytes=state.pool.memory_bytes(),
        memory_budget_bytes=state.pool.limits.memory_budget_bytes,
    )


@protected_router.post(
    "/stores/{store_id}/classify",
    tags=["stores"],
    responses={
        404: {"description": "No such store is registered."},
        409: {"description": "The store has no @champion classifier yet."},
        413: {"description": "Too many names in one request."},
        422: {"description": "A name is too long, or top_k is out of range."},
        503: {"description": "The champion could not be loaded."},
    },
)
def classify(
    store_id: str,
    request: ClassifyRequest,
    state: "ServingState" = Depends(serving_state),
) -> ClassifyResponse:
    """Classify product names with the store's @champion classifier."""
    started = time.perf_counter()
    check_limits(request, state)
    loaded = state.pool.get(store_id)

    names = [clean_title(name) for name in request.names]
    embeddings, predictions = predict_names(state, loaded, names, request.top_k)
    response = ClassifyResponse(
        store_id=store_id,
        classifier_version=loaded.version,
        results=[
            result_of(name, prediction)
            for name, prediction in zip(request.names, predictions)
        ],
    )

    record_request(
        state, loaded, predictions, embeddings, time.perf_counter() - started
    )
    return response


@protected_router.get("/metrics", tags=["metrics"], response_class=Response)
def metrics(state: "ServingState" = Depends(serving_state)) -> Response:
    """Return the Prometheus metrics of this server."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def check_limits(request: ClassifyRequest, state: "ServingState") -> None:
    """Reject a request over the name count, name length or top_k limits."""
    settings = state.settings
    if len(request.names) > settings.serve_max_names:
        state.metrics.rejected.labels("too_many_names").inc()
        raise HTTPException(
            status_code=413,
            detail=f"Too many names: {len(request.names)} in one request, the limit is "
            f"{settings.serve_max_names} (MKT_SERVE_MAX_NAMES, mkt serve --max-batch). "
            "Split the names over several requests.",
        )
    for position, name in enumerate(request.names):
        if len(name) > settings.serve_max_name_chars:
            state.metrics.rejected.labels("name_too_long").inc()
            raise HTTPException(
                status_code=422,
                detail=f"Name at position {position} has {len(name)} characters, the "
                f"limit is {settings.serve_max_name_chars} (MKT_SERVE_MAX_NAME_CHARS, "
                "mkt serve --max-name-chars). Shorten it.",
            )
    if request.top_k > settings.serve_max_top_k:
        state.metrics.rejected.labels("top_k_too_large").inc()
        raise HTTPException(
            status_code=422,
            detail=f"top_k {request.top_k} is over the limit of "
            f"{settings.serve_max_top_k} (MKT_SERVE_MAX_TOP_K). Ask for fewer candidates.",
        )


def predict_names(
    state: "ServingState", loaded: LoadedClassifier, names: list[str], top_k: int
) -> tuple[np.ndarray, list[Prediction]]:
    """Return the embeddings of the non-empty names and a prediction for every name.

    Empty names carry no signal, so they get an abstention instead of a guess, the same
    as in the MLflow pyfunc flavour.
    """
    positions = [i for i, name in enumerate(names) if name]
    predictions = [Prediction(None, None, 0.0)] * len(names)
    if not positions:
        return np.zeros((0, loaded.classifier.dimension), dtype=np.float32), predictions

    kept_names = [names[i] for i in positions]
    embeddings = state.encoder.encode(loaded.embedding_model, kept_names)
    limit_search_threads()
    found = loaded.classifier.predict(embeddings, top_k=top_k, titles=kept_names)
    # Categories removed from the tree since training go to their successors, and
    # retired ones are dropped.
    label_map = state.label_maps.get(loaded.store_id)
    for position, prediction in zip(positions, found):
        predictions[position] = remap_prediction(prediction, label_map)
    return embeddings, predictions


def limit_search_threads() -> None:
    """Make FAISS search on `SEARCH_THREAD_COUNT` threads when called from this thread.

    OpenMP keeps the thread count per calling thread, and requests run on a pool of
    threads, so each request sets it instead of the server setting it once at start.
    """
    faiss.omp_set_num_threads(SEARCH_THREAD_COUNT)


def result_of(name: str, prediction: Prediction) -> NameResult:
    """Return the API result for one name."""
    return NameResult(
        name=name,
        category_id=prediction.category_id,
        category_path=prediction.category_path,
        score=prediction.score,
        is_abstained=prediction.is_abstained,
        candidates=[
            CandidateResult(
                category_id=candidate.category_id,
                category_path=candidate.category_path,
                score=candidate.score,
            )
            for candidate in prediction.candidates
        ],
    )


def record_request(
    state: "ServingState",
    loaded: LoadedClassifier,
    predictions: list[Prediction],
    embeddings: np.ndarray,
    latency_s: float,
) -> None:
    """Count a classify request in Prometheus and in the store's serving window."""
    store_id = loaded.store_id
    top_scores = [prediction.score for prediction in predictions]
    abstain_count = sum(prediction.is_abstained for prediction in predictions)

    metrics = state.metrics
    metrics.requests.labels(store_id).inc()
    metrics.names.labels(store_id).inc(len(predictions))
    metrics.abstained.labels(store_id).inc(abstain_count)
    metrics.latency.labels(store_id).observe(latency_s)
    top_score = metrics.top_score.labels(store_id)
    for score in top_scores:
        top_score.observe(score)

    state.recorder.record(
        store_id,
        loaded.version,
        latency_s=latency_s,
        top_scores=top_scores,
        abstain_count=abstain_count,
        embeddings=embeddings,
    )
