"""Embed stage: build the training snapshot and precompute its embeddings, incrementally."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task

from mkt.catalog import load_store
from mkt.embeddings import ProgressCallback, embed_with_cache
from mkt.encoders import load_encoder
from mkt.errors import NotEnoughData
from mkt.flows.context import open_database, trigger_stage
from mkt.index import release_mapped_pages
from mkt.settings import Settings
from mkt.snapshot import (
    build_training_snapshot,
    load_labelled_products,
    open_embeddings_file,
    save_snapshot,
    stats_dict,
)

# Titles embedded per chunk; one chunk of 384-dimensional float32 rows is about 150 MB.
STREAM_CHUNK_ROWS = 100_000


@contextmanager
def embedding_progress(is_shown: bool) -> Iterator[ProgressCallback | None]:
    """Yield a callback that drives a progress bar on stderr, or None when hidden."""
    if not is_shown:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
    )
    with Progress(
        *columns, TimeRemainingColumn(), console=Console(stderr=True)
    ) as progress:
        bar = progress.add_task("Embedding new names", total=None)

        def update(done_count: int, total_count: int) -> None:
            progress.update(bar, completed=done_count, total=total_count)

        yield update


def embed_to_file(
    titles: list[str],
    embedding_model: str,
    settings: Settings,
    store_dir: Path,
    *,
    on_progress: ProgressCallback | None = None,
    chunk_rows: int = STREAM_CHUNK_ROWS,
) -> tuple[np.memmap, int]:
    """Embed titles chunk by chunk into the snapshot's float16 embeddings file.

    Only one chunk is held as float32 at a time, so memory does not grow with the
    number of names. Returns the memory-mapped file and how many titles were newly encoded.
    """
    embeddings, new_count = None, 0
    for start in range(0, len(titles), chunk_rows):
        chunk = titles[start : start + chunk_rows]
        vectors, chunk_new_count = embed_with_cache(
            chunk,
            embedding_model,
            settings.embedding_cache_dir,
            batch_size=settings.embedding_batch_size,
            on_progress=on_progress,
        )
        if embeddings is None:
            embeddings = open_embeddings_file(store_dir, len(titles), vectors.shape[1])
        embeddings[start : start + len(chunk)] = vectors
        embeddings.flush()
        release_mapped_pages(embeddings)
        new_count += chunk_new_count
    if embeddings is None:
        raise NotEnoughData(
            f"Store snapshot in {str(store_dir)!r} has no names to embed. Crawl "
            "products first: mkt run STORE_ID --stage crawl"
        )
    return embeddings, new_count


@task(name="build-snapshot")
def build_snapshot(store_id: str):
    """Clean, deduplicate, cap and split the store's labelled products."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)

    products = load_labelled_products(engine, store_id)
    snapshot, stats = build_training_snapshot(products, config)
    logger.info(
        "Store %r: snapshot of %d names in %d categories (%d train, %d test); dropped %d empty, "
        "%d duplicate, %d over target, %d in %d categories under the minimum",
        store_id,
        len(snapshot),
        stats.category_count,
        stats.train_count,
        stats.test_count,
        stats.empty_count,
        stats.duplicate_count,
        stats.capped_count,
        stats.rare_product_count,
        stats.rare_category_count,
    )
    return snapshot, stats_dict(stats)


@task(name="embed-snapshot")
def embed_snapshot(
    store_id: str, snapshot, stats: dict, show_progress: bool = False
) -> dict:
    """Embed the snapshot's names, reusing cached embeddings, and save it for training."""
    logger = get_run_logger()
    settings = Settings()
    config = load_store(open_database(settings), store_id)

    titles = snapshot["title"].tolist()
    over_length_count = count_over_length(store_id, titles, config.embedding_model)

    started = time.perf_counter()
    with embedding_progress(show_progress) as on_progress:
        embeddings, new_count = embed_to_file(
            titles,
            config.embedding_model,
            settings,
            settings.store_dir(store_id),
            on_progress=on_progress,
        )
    elapsed_s = time.perf_counter() - started

    metadata = {
        "embedding_model": config.embedding_model,
        # The train stage logs these stats to MLflow as snapshot_* metrics.
        "stats": {**stats, "over_length_count": over_length_count},
        "new_embeddings": new_count,
    }
    save_snapshot(settings.store_dir(store_id), snapshot, embeddings, metadata)
    logger.info(
        "Store %r: %d names embedded with %r, %d newly encoded in %.1f s",
        store_id,
        len(snapshot),
        config.embedding_model,
        new_count,
        elapsed_s,
    )
    return {
        "name_count": len(snapshot),
        "new_embeddings": new_count,
        "over_length_count": over_length_count,
        "seconds": elapsed_s,
    }


def count_over_length(store_id: str, titles: list[str], embedding_model: str) -> int:
    """Count the names the encoder cuts at its maximum sequence length, warning if any."""
    logger = get_run_logger()
    encoder = load_encoder(embedding_model)
    over_length_count = encoder.count_over_length(titles)
    if over_length_count:
        logger.warning(
            "Store %r: %d of %d names are longer than %d tokens; %r embeds only their "
            "first %d tokens",
            store_id,
            over_length_count,
            len(titles),
            encoder.max_seq_length,
            embedding_model,
            encoder.max_seq_length,
        )
    return over_length_count


@flow(name="embed", flow_run_name="embed-{store_id}")
def embed_store(store_id: str, show_progress: bool = False) -> dict:
    """Build the store's training snapshot and embed the names not embedded before."""
    snapshot, stats = build_snapshot(store_id)
    summary = embed_snapshot(store_id, snapshot, stats, show_progress=show_progress)

    config = load_store(open_database(Settings()), store_id)
    new_fraction = summary["new_embeddings"] / max(summary["name_count"], 1)
    if (
        config.deployments.train.after_previous_stage
        and new_fraction >= config.deployments.retrain_min_new_fraction
        and summary["new_embeddings"] > 0
    ):
        trigger_stage(store_id, "train", f"{new_fraction:.1%} of the names are new")
    return {**summary, "snapshot": stats}
