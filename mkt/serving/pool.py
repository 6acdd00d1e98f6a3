"""The classifiers a server holds: lazy loading, the memory budget and champion switches."""

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

from mkt.catalog import list_store_rows, load_store
from mkt.errors import ClassifierNotFound
from mkt.serving.loading import (
    ClassifierLoadFailed,
    LoadedClassifier,
    RegistryReader,
    estimate_encoder_bytes,
)
from mkt.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass
class StoreSlot:
    """The state of one store in the server: its loaded classifier and last load failure."""

    store_id: str
    loaded: LoadedClassifier | None = None
    last_used_s: float = 0.0
    failed_version: str | None = None
    load_error: str | None = None
    failed_at_s: float = 0.0
    # Serialises loads of this store, so concurrent first requests load it once.
    load_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class PoolLimits:
    """How much the pool may hold and how often it looks at the registry."""

    memory_budget_bytes: int
    load_retry_interval_s: float


class ClassifierPool:
    """Hold each requested store's `@champion` classifier, within a memory budget.

    A store's classifier loads on its first request. When the estimated memory of the
    loaded classifiers and their embedding models passes the budget, the least recently
    used classifiers are unloaded. `refresh_stores` switches a loaded store to the version
    its alias points at, and a version that fails to load leaves the old one serving.
    """

    def __init__(
        self,
        *,
        reader: RegistryReader,
        engine: Engine,
        limits: PoolLimits,
        metrics: ServingMetrics,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.limits = limits
        self.metrics = metrics
        self._lock = threading.Lock()
        self._slots: dict[str, StoreSlot] = {}
        self._encoder_bytes: dict[str, int] = {}

    def get(self, store_id: str) -> LoadedClassifier:
        """Return the store's loaded classifier, loading its champion on first use.

        Raises:
            StoreNotFound: if no such store is registered.
            ClassifierNotFound: if the store has no `@champion` classifier.
            ClassifierLoadFailed: if the champion could not be loaded.
            RegistryUnavailable: if the MLflow registry could not be read.
        """
        slot = self._slot(store_id)
        loaded = slot.loaded
        if loaded is None:
            loaded = self._load_champion(slot)
        slot.last_used_s = time.monotonic()
        return loaded

    def slots(self) -> list[StoreSlot]:
        """Return the stores requested since start, loaded or not, ordered by id."""
        with self._lock:
            return sorted(self._slots.values(), key=lambda slot: slot.store_id)

    def memory_bytes(self) -> int:
        """Return the estimated memory of the loaded classifiers and embedding models."""
        with self._lock:
            return self._memory_bytes_locked()

    def refresh_stores(self) -> None:
        """Drop unregistered stores and switch loaded ones whose `@champion` moved."""
        self._drop_unregistered()
        with self._lock:
            loaded_slots = [slot for slot in self._slots.values() if slot.loaded]
        for slot in loaded_slots:
            self._follow_champion(slot)

    def _drop_unregistered(self) -> None:
        registered = {row.store_id for row in list_store_rows(self.engine)}
        with self._lock:
            removed = [
                store_id for store_id in self._slots if store_id not in registered
            ]
            for store_id in removed:
                del self._slots[store_id]
            memory_bytes = self._memory_bytes_locked()

        self.metrics.memory_bytes.set(memory_bytes)
        for store_id in removed:
            self.metrics.served_version.remove(store_id)
            self.metrics.has_load_error.remove(store_id)
            logger.info(
                "Store %r: unregistered, so its classifier is unloaded", store_id
            )

    def _slot(self, store_id: str) -> StoreSlot:
        with self._lock:
            slot = self._slots.get(store_id)
        if slot is not None:
            return slot
        load_store(self.engine, store_id)
        with self._lock:
            return self._slots.setdefault(store_id, StoreSlot(store_id))

    def _load_champion(self, slot: StoreSlot) -> LoadedClassifier:
        with slot.load_lock:
            if slot.loaded is not None:
                return slot.loaded
            version = self.reader.champion_version(slot.store_id)
            if version is None:
                raise ClassifierNotFound(
                    f"Store {slot.store_id!r} has no @champion classifier. Train and "
                    f"evaluate one: mkt run {slot.store_id}"
                )
            if self._has_failed_recently(slot, version):
                retry_in_s = self.limits.load_retry_interval_s - (
                    time.monotonic() - slot.failed_at_s
                )
                raise ClassifierLoadFailed(
                    f"{slot.load_error} Next try in {retry_in_s:.0f} s."
                )
            try:
                loaded = self._load_version(slot, version)
            except ClassifierLoadFailed as exc:
                logger.error("%s Its classify requests return 503 until it loads.", exc)
                raise
            self._install(slot, loaded)
            return loaded

    def _has_failed_recently(self, slot: StoreSlot, version: str) -> bool:
        waited_s = time.monotonic() - slot.failed_at_s
        return (
            slot.failed_version == version
            and waited_s < self.limits.load_retry_interval_s
        )

    def _follow_champion(self, slot: StoreSlot) -> None:
        serving = slot.loaded
        version = self.reader.champion_version(slot.store_id)
        if serving is None or version is None or version == serving.version:
            # NOTE: a store whose alias was removed keeps serving its last champion.
            return
        if self._has_failed_recently(slot, version):
            return

        with slot.load_lock:
            try:
                loaded = self._load_version(slot, version)
            except ClassifierLoadFailed as exc:
                logger.error("%s Still serving version %s.", exc, serving.version)
                return
            if slot.loaded is None:
                logger.debug(
                    "Store %r: unloaded while version %s loaded, so it is not installed",
                    slot.store_id,
                    version,
                )
                return
            self._install(slot, loaded)
        logger.info(
            "Store %r: switched from classifier version %s to %s",
            slot.store_id,
            serving.version,
            loaded.version,
        )

    def _load_version(self, slot: StoreSlot, version: str) -> LoadedClassifier:
        started = time.perf_counter()
        try:
            loaded = self.reader.load_version(slot.store_id, version)
            self._count_encoder(loaded.embedding_model)
        # Broken artifacts fail in many ways (FAISS, pickle, file and MLflow errors); any
        # of them must leave the server up and the current version serving.
        except Exception as exc:
            message = (
                f"Store {slot.store_id!r}: classifier version {version} failed to load "
                f"({type(exc).__name__}: {exc}). Point @champion at a working version "
                f"(mkt rollback {slot.store_id}) or train a new one (mkt run {slot.store_id})."
            )
            with self._lock:
                slot.failed_version = version
                slot.load_error = message
                slot.failed_at_s = time.monotonic()
            self.metrics.load_failures.labels(slot.store_id).inc()
            self.metrics.has_load_error.labels(slot.store_id).set(1)
            raise ClassifierLoadFailed(message) from exc

        logger.info(
            "Store %r: classifier version %s loaded in %.1f s (%.1f MB estimated)",
            slot.store_id,
            version,
            time.perf_counter() - started,
            loaded.size_bytes / MB,
        )
        return loaded

    def _count_encoder(self, embedding_model: str) -> None:
        if embedding_model not in self._encoder_bytes:
            size_bytes = estimate_encoder_bytes(embedding_model)
            with self._lock:
                self._encoder_bytes[embedding_model] = size_bytes

    def _install(self, slot: StoreSlot, loaded: LoadedClassifier) -> None:
        with self._lock:
            slot.loaded = loaded
            slot.last_used_s = time.monotonic()
            slot.failed_version = slot.load_error = None
            unloaded = self._unload_over_budget(keep=slot.store_id)
            memory_bytes = self._memory_bytes_locked()

        self.metrics.served_version.labels(slot.store_id).set(float(loaded.version))
        self.metrics.has_load_error.labels(slot.store_id).set(0)
        self.metrics.memory_bytes.set(memory_bytes)
        for store_id in unloaded:
            self.metrics.unloads.labels(store_id).inc()
            self.metrics.served_version.remove(store_id)
            logger.info(
                "Store %r: classifier unloaded to stay within the memory budget "
                "of %.0f MB",
                store_id,
                self.limits.memory_budget_bytes / MB,
            )
        if memory_bytes > self.limits.memory_budget_bytes:
            logger.warning(
                "Store %r: loaded classifiers need an estimated %.0f MB, over the memory "
                "budget of %.0f MB; it is served anyway. Raise MKT_SERVE_MEMORY_BUDGET_MB",
                slot.store_id,
                memory_bytes / MB,
                self.limits.memory_budget_bytes / MB,
            )

    def _unload_over_budget(self, *, keep: str) -> list[str]:
        unloaded = []
        while self._memory_bytes_locked() > self.limits.memory_budget_bytes:
            others = [
                slot
                for slot in self._slots.values()
                if slot.loaded is not None and slot.store_id != keep
            ]
            if not others:
                break
            least_recent = min(others, key=lambda slot: slot.last_used_s)
            least_recent.loaded = None
            unloaded.append(least_recent.store_id)
        return unloaded

    def _memory_bytes_locked(self) -> int:
        loaded = [slot.loaded for slot in self._slots.values() if slot.loaded]
        # NOTE: load_encoder caches up to 4 embedding models in the process, so a model
        # stays in memory after its last classifier unloads, uncounted here.
        # Stores that share an embedding model share one copy of it.
        models = {item.embedding_model for item in loaded}
        encoder_bytes = sum(self._encoder_bytes.get(model, 0) for model in models)
        return sum(item.size_bytes for item in loaded) + encoder_bytes
