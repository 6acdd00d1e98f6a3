"""Reading champion aliases and loading classifier versions from the MLflow registry."""

import tempfile
from dataclasses import dataclass
from datetime import datetime

import faiss
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mkt.classifier import KnnClassifier
from mkt.classifier_pyfunc import StoreClassifierModel
from mkt.database import utc_now
from mkt.encoders import load_encoder
from mkt.errors import MktError
from mkt.registry import CHAMPION_ALIAS, registered_model_name

# MLflow's error codes when the registered model or its alias does not exist.
NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
SEARCH_PAGE_SIZE = 1000


class RegistryUnavailable(MktError):
    """The MLflow registry could not be read."""


class ClassifierLoadFailed(MktError):
    """A store's classifier version could not be loaded from its MLflow artifacts."""


@dataclass(frozen=True)
class LoadedClassifier:
    """One store's classifier version in memory, ready to classify names."""

    store_id: str
    version: str
    classifier: KnnClassifier
    embedding_model: str
    size_bytes: int
    loaded_at: datetime


class RegistryReader:
    """Read `@champion` aliases and classifier artifacts from the registry at one URI.

    The URI is passed to every call instead of set globally, so the server never changes
    the MLflow state of the process that embeds it.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion_version(self, store_id: str) -> str | None:
        """Return the version the store's `@champion` alias points at, or None.

        Raises:
            RegistryUnavailable: if the registry fails for another reason than a missing
                model or alias.
        """
        try:
            version = self.client.get_model_version_by_alias(
                registered_model_name(store_id), CHAMPION_ALIAS
            )
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                return None
            raise self._unavailable(exc) from exc
        return str(version.version)

    def champion_versions(self, store_ids: list[str]) -> dict[str, str]:
        """Return the `@champion` version of each store that has one, in few registry calls."""
        wanted = {registered_model_name(store_id): store_id for store_id in store_ids}
        versions: dict[str, str] = {}
        page_token = None
        try:
            while True:
                page = self.client.search_registered_models(
                    max_results=SEARCH_PAGE_SIZE, page_token=page_token
                )
                for model in page:
                    version = (model.aliases or {}).get(CHAMPION_ALIAS)
                    if model.name in wanted and version is not None:
                        versions[wanted[model.name]] = str(version)
                page_token = page.token
                if not page_token:
                    return versions
        except MlflowException as exc:
            raise self._unavailable(exc) from exc

    def check(self) -> None:
        """Raise `RegistryUnavailable` unless a search of the registry succeeds."""
        try:
            self.client.search_registered_models(max_results=1)
        except MlflowException as exc:
            raise self._unavailable(exc) from exc

    def load_version(self, store_id: str, version: str) -> LoadedClassifier:
        """Download a classifier version's pyfunc artifacts and load it with its encoder.

        Raises:
            ClassifierLoadFailed: if the artifacts are not a store classifier, or its
                embeddings do not fit its embedding model.
        """
        uri = f"models:/{registered_model_name(store_id)}/{version}"
        # MLflow 3.17 resolves a models:/ URI against the global registry even when
        # given another one, so the version's artifact location is looked up here.
        artifact_uri = self.client.get_model_version_download_uri(
            registered_model_name(store_id), version
        )
        with tempfile.TemporaryDirectory(prefix="mkt-serve-") as scratch:
            local_path = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=scratch, tracking_uri=self.uri
            )
            # The classifier reads its index and labels into memory here, so the
            # downloaded files can go when the block ends.
            python_model = mlflow.pyfunc.load_model(local_path).unwrap_python_model()
        if not isinstance(python_model, StoreClassifierModel):
            raise ClassifierLoadFailed(
                f"{uri} is a {type(python_model).__name__}, not a store classifier. "
                f"Register one: mkt run {store_id} --stage train"
            )

        classifier = python_model.classifier
        embedding_model = python_model.embedding_model
        encoder_dimension = load_encoder(embedding_model).dimension
        if encoder_dimension != classifier.dimension:
            raise ClassifierLoadFailed(
                f"{uri} indexes {classifier.dimension}-dimensional embeddings but "
                f"{embedding_model!r} makes {encoder_dimension}-dimensional ones. "
                f"Train it again: mkt run {store_id} --stage embed --stage train"
            )
        return LoadedClassifier(
            store_id=store_id,
            version=str(version),
            classifier=classifier,
            embedding_model=embedding_model,
            size_bytes=estimate_classifier_bytes(classifier),
            loaded_at=utc_now(),
        )

    def _unavailable(self, exc: MlflowException) -> RegistryUnavailable:
        return RegistryUnavailable(
            f"MLflow registry at {self.uri!r} could not be read: {exc}. Check "
            "MKT_MLFLOW_TRACKING_URI and that the registry is running."
        )


def estimate_classifier_bytes(classifier: KnnClassifier) -> int:
    """Estimate the memory of a classifier: index, labels, categories, lexical block, head."""
    index = classifier.index
    code_size = getattr(index, "code_size", None)
    if code_size:
        index_bytes = index.ntotal * code_size
    else:
        index_bytes = faiss.serialize_index(index).nbytes
    category_bytes = sum(
        len(category_id.encode()) + len(path.encode())
        for category_id, path in classifier.categories
    )
    lexical_bytes = 0
    if classifier.lexical_block is not None:
        lexical_bytes = classifier.lexical_block.estimate_bytes()
    head_bytes = 0
    if classifier.linear_head is not None:
        head_bytes = classifier.linear_head.estimate_bytes()
    return int(
        index_bytes
        + classifier.vector_labels.nbytes
        + category_bytes
        + lexical_bytes
        + head_bytes
    )


def estimate_encoder_bytes(embedding_model: str) -> int:
    """Estimate the memory of an embedding model from the size of its weights."""
    return int(load_encoder(embedding_model).size_bytes)
