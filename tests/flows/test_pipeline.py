"""Run every stage's Prefect flow on a small real store, with MLflow on a temporary SQLite file."""

import numpy as np
import pandas as pd
import pytest
from sqlmodel import select

from mkt.catalog import register_store
from mkt.database import Product, open_session
from mkt.flows.context import open_database
from mkt.flows.evaluate import sample_rows
from mkt.settings import Settings
from mkt.stores.config import load_store_config
from tests.conftest import write_sample_products, write_store_config

pytestmark = pytest.mark.slow


@pytest.fixture
def store(mkt_home, tmp_path, prefect_harness):
    products = write_sample_products(tmp_path, per_category=30)
    config = load_store_config(write_store_config(tmp_path, products))
    register_store(open_database(Settings()), config)
    return config.store_id


def run_all(store_id):
    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store
    from mkt.flows.evaluate import evaluate_store
    from mkt.flows.train import train_store

    return (
        crawl_store(store_id),
        embed_store(store_id),
        train_store(store_id),
        evaluate_store(store_id),
    )


def test_pipeline_crowns_first_classifier_and_classifies(store):
    from mkt.registry import configure_mlflow, get_champion, load_champion

    crawl, embed, train, evaluation = run_all(store)

    assert crawl["products"]["inserted"] == 120
    assert crawl["tree"]["category_count"] == 4
    assert embed["new_embeddings"] == embed["name_count"] > 100
    assert train["classifier_version"] == "1"
    assert evaluation["is_champion"]
    assert evaluation["metrics"]["accuracy"] > 0.8
    configure_mlflow(Settings())
    assert str(get_champion(store).version) == "1"

    titles = pd.DataFrame({"title": ["apple iphone x 64gb space grey"]})
    answers = load_champion(store).predict(titles, params={"top_k": 2})
    assert answers.loc[0, "category_path"] == "Mobile Phones"


def test_rerun_embeds_nothing_and_keeps_champion(store):
    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store
    from mkt.flows.evaluate import evaluate_store
    from mkt.flows.train import train_store

    run_all(store)
    crawl = crawl_store(store)
    embed = embed_store(store)
    train = train_store(store)
    evaluation = evaluate_store(store)

    assert crawl["products"]["inserted"] == 0
    assert crawl["products"]["unchanged"] == 120
    assert embed["new_embeddings"] == 0
    with open_session(open_database(Settings())) as session:
        assert len(session.exec(select(Product)).all()) == 120
    assert train["classifier_version"] == "2"
    assert not evaluation["is_champion"]
    assert "does not beat" in evaluation["reason"]


def test_evaluate_logs_metrics_and_tables_to_mlflow(store):
    import mlflow

    from mkt.registry import configure_mlflow

    _, _, train, _ = run_all(store)

    configure_mlflow(Settings())
    mlflow_run = mlflow.get_run(train["mlflow_run_id"])
    assert mlflow_run.data.metrics["test_accuracy"] > 0.8
    assert "test_level_1_accuracy" in mlflow_run.data.metrics
    assert mlflow_run.data.params["k"] == "10"
    artifacts = {
        item.path
        for item in mlflow.MlflowClient().list_artifacts(
            mlflow_run.info.run_id, "evaluation"
        )
    }
    assert artifacts == {
        "evaluation/per_category.json",
        "evaluation/confusion_pairs.json",
        "evaluation/test_scores.json",
        "evaluation/train_centroid.json",
    }


def test_train_without_snapshot_says_to_embed(store):
    from mkt.errors import NotEnoughData
    from mkt.flows.train import train_store

    with pytest.raises(NotEnoughData, match="--stage embed"):
        train_store(store)


def test_fine_tuned_encoder_serves_its_classifier(mkt_home, tmp_path, prefect_harness):
    from mlflow import MlflowClient

    from mkt.registry import configure_mlflow, get_champion, load_champion

    products = write_sample_products(tmp_path, per_category=30)
    fine_tune = {"fine_tune": {"steps": 3, "pairs_per_step": 4}}
    config = load_store_config(
        write_store_config(tmp_path, products, classifier=fine_tune)
    )
    register_store(open_database(Settings()), config)

    _, _, train, evaluation = run_all(config.store_id)

    assert evaluation["is_champion"]
    assert evaluation["metrics"]["accuracy"] > 0.8
    configure_mlflow(Settings())
    run = MlflowClient().get_run(train["mlflow_run_id"])
    assert run.data.metrics["fine_tune_steps"] == 3
    model = load_champion(config.store_id)
    embedding_model = model.unwrap_python_model().embedding_model
    installed = Settings().fine_tuned_encoder_dir
    assert embedding_model.startswith(f"onnx-int8:{installed}")
    assert str(get_champion(config.store_id).version) == "1"
    titles = pd.DataFrame({"title": ["apple iphone x 64gb space grey"]})
    answers = model.predict(titles, params={"top_k": 2})
    assert answers.loc[0, "category_path"] == "Mobile Phones"


def test_sample_rows_caps_a_large_split_at_random():
    mask = np.arange(1_000) % 4 == 0

    sample = sample_rows(mask, limit=100, seed=1)

    assert len(sample) == 100
    assert np.all(mask[sample])
    assert np.all(np.diff(sample) > 0)
    assert list(sample_rows(mask, limit=250, seed=1)) == list(np.flatnonzero(mask))
