"""Tests of the HTTP server on real uvicorn, with real classifiers in a real MLflow registry."""

import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mkt.catalog import remove_store
from mkt.registry import set_champion
from mkt.serving import create_app
from mkt.serving.background import ServerThread
from mkt.serving.settings import ServingSettings
from mkt.serving_stats import load_serving_windows
from tests.serving.stores import (
    KITCHEN_STORE,
    PHONE_STORE,
    add_trained_store,
    corrupt_version,
    register_version,
    serving_engine,
)

# The module fixture trains and registers real classifiers.
pytestmark = pytest.mark.slow

WAIT_S = 60.0


def start(**settings) -> ServerThread:
    """Return a server over the test stores, to use in a `with` block."""
    defaults = {"serve_stats_flush_interval_s": 3600.0}
    return ServerThread(create_app(ServingSettings(**{**defaults, **settings})))


def classify(client: httpx.Client, store_id: str, *names: str, **extra):
    """POST names to a store's classify route and return the response."""
    return client.post(
        f"/stores/{store_id}/classify", json={"names": list(names), **extra}
    )


def wait_for(condition, timeout_s: float = WAIT_S):
    """Call `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")


def metric_value(client: httpx.Client, name: str, **labels) -> float:
    """Return one sample's value from the server's Prometheus metrics, 0 if absent."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(key) == value for key, value in labels.items()
            ):
                return sample.value
    return 0.0


def store_state(client: httpx.Client, store_id: str) -> dict:
    """Return the entry of one store in GET /stores."""
    stores = client.get("/stores").json()["stores"]
    return next(store for store in stores if store["store_id"] == store_id)


def answer_of_version(client: httpx.Client, store_id: str, version: str):
    """Return the answer for a fixed name if the given version gave it, else None."""
    answer = classify(client, store_id, "apple iphone 8").json()
    return answer if answer["classifier_version"] == version else None


def failed_store_state(client: httpx.Client, store_id: str):
    """Return the store's entry in GET /stores once it reports a failed version."""
    state = store_state(client, store_id)
    return state if state["failed_version"] else None


def status_if_not_ok(client: httpx.Client, store_id: str) -> int | None:
    """Return the status of a classify request unless it succeeded."""
    response = classify(client, store_id, "apple iphone 8")
    return response.status_code if response.status_code != 200 else None


@pytest.fixture
def client(trained_stores):
    with start() as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        yield http


def test_classify_answers_for_two_stores(trained_stores, client):
    phones = classify(client, PHONE_STORE, "apple iphone x 64gb space grey", top_k=2)
    kitchen = classify(client, KITCHEN_STORE, "bosch microwave oven 800w")

    assert phones.status_code == 200
    answer = phones.json()["results"][0]
    assert answer["category_path"] == "Mobile Phones"
    assert answer["category_id"] == answer["candidates"][0]["category_id"]
    assert not answer["is_abstained"]
    assert 1 <= len(answer["candidates"]) <= 2
    assert phones.json()["classifier_version"] == "1"
    assert kitchen.status_code == 200
    assert kitchen.json()["results"][0]["category_path"] == "Microwaves"


def test_classify_keeps_request_order(trained_stores, client):
    names = ["samsung 55 inch 4k smart tv", "intel core i7 processor", "nokia 3310"]

    response = classify(client, PHONE_STORE, *names)

    results = response.json()["results"]
    assert [result["name"] for result in results] == names
    assert [result["category_path"] for result in results] == [
        "TVs",
        "CPUs",
        "Mobile Phones",
    ]


def test_classify_abstains_on_blank_names(trained_stores, client):
    mixed = classify(client, PHONE_STORE, "  ", "apple iphone 8")
    blank = classify(client, PHONE_STORE, "")

    blank_result, named_result = mixed.json()["results"]
    assert blank_result["is_abstained"]
    assert blank_result["candidates"] == []
    assert blank_result["name"] == "  "
    assert named_result["category_path"] == "Mobile Phones"
    assert blank.status_code == 200
    assert blank.json()["results"][0]["is_abstained"]


def test_stores_lists_champion_and_loaded_version(trained_stores, client):
    before = store_state(client, PHONE_STORE)
    classify(client, PHONE_STORE, "apple iphone 8")
    after = store_state(client, PHONE_STORE)

    assert before["champion_version"] == "1"
    assert before["loaded_version"] is None
    assert after["loaded_version"] == "1"
    assert after["memory_bytes"] > 0
    assert after["load_error"] is None


def test_classify_unknown_store_names_known_stores(trained_stores, client):
    response = classify(client, "shop-none", "apple iphone 8")

    assert response.status_code == 404
    assert "'shop-none'" in response.json()["detail"]
    assert PHONE_STORE in response.json()["detail"]


def test_classify_store_without_champion(trained_stores, client):
    response = classify(client, trained_stores["untrained"], "apple iphone 8")

    assert response.status_code == 409
    assert "mkt run" in response.json()["detail"]


def test_classify_rejects_too_many_names(trained_stores):
    with start(serve_max_names=2) as server, httpx.Client(base_url=server.url) as http:
        response = classify(http, PHONE_STORE, "a", "b", "c")

    assert response.status_code == 413
    assert "3 in one request" in response.json()["detail"]
    assert "limit is 2" in response.json()["detail"]


def test_classify_rejects_long_name(trained_stores):
    with (
        start(serve_max_name_chars=10) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        response = classify(http, PHONE_STORE, "short", "x" * 11)

    assert response.status_code == 422
    assert "position 1 has 11 characters" in response.json()["detail"]
    assert "limit is 10" in response.json()["detail"]


def test_classify_rejects_large_top_k(trained_stores, client):
    response = classify(client, PHONE_STORE, "apple iphone 8", top_k=51)

    assert response.status_code == 422
    assert "top_k 51" in response.json()["detail"]


def test_classify_rejects_empty_names(trained_stores, client):
    response = classify(client, PHONE_STORE)

    assert response.status_code == 422


def test_token_guards_api_but_not_health(trained_stores):
    with start(api_token="s3cret") as server, httpx.Client(base_url=server.url) as http:
        missing = classify(http, PHONE_STORE, "apple iphone 8")
        wrong = http.get("/stores", headers={"Authorization": "Bearer nope"})
        right = http.get("/stores", headers={"Authorization": "Bearer s3cret"})
        health = http.get("/health")
        ready = http.get("/ready")

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "MKT_API_TOKEN" in missing.json()["detail"]
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready"}


def test_token_argument_overrides_setting(trained_stores):
    app = create_app(ServingSettings(api_token="from-env"), token="from-cli")

    with ServerThread(app) as server, httpx.Client(base_url=server.url) as http:
        old = http.get("/stores", headers={"Authorization": "Bearer from-env"})
        new = http.get("/stores", headers={"Authorization": "Bearer from-cli"})

    assert old.status_code == 401
    assert new.status_code == 200


def test_metrics_count_requests_names_and_rejections(trained_stores, client):
    classify(client, PHONE_STORE, "apple iphone 8", "lg oled tv")
    classify(client, PHONE_STORE, "amd ryzen 5 3600")
    classify(client, "shop-none", "x")

    labels = {"store_id": PHONE_STORE}
    assert metric_value(client, "mkt_classify_requests_total", **labels) == 2
    assert metric_value(client, "mkt_classify_names_total", **labels) == 3
    assert metric_value(client, "mkt_classify_latency_seconds_count", **labels) == 2
    assert metric_value(client, "mkt_classify_top_score_count", **labels) == 3
    assert metric_value(client, "mkt_classifier_served_version", **labels) == 1
    rejected = "mkt_classify_rejected_requests_total"
    assert metric_value(client, rejected, reason="store_not_found") == 1


def test_embedding_cache_hits_repeated_names(trained_stores, client):
    classify(client, PHONE_STORE, "apple iphone 8")
    classify(client, PHONE_STORE, "apple iphone 8")

    lookups = "mkt_embedding_cache_lookups_total"
    assert metric_value(client, lookups, result="miss") == 1
    assert metric_value(client, lookups, result="hit") == 1


def test_server_encodes_in_serving_batches(trained_stores):
    app = create_app(ServingSettings(serve_embedding_batch_size=8))

    assert app.state.serving.encoder.batch_size == 8


def test_health_ready_and_openapi_are_served(trained_stores, client):
    schema = client.get("/openapi.json").json()

    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert "/stores/{store_id}/classify" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_champion_switch_needs_no_restart(trained_stores, tmp_path):
    store = add_trained_store(tmp_path, "shop-switch", trained_stores["encoder"])

    with (
        start(serve_alias_check_interval_s=0.2) as server,
        httpx.Client(base_url=server.url, timeout=WAIT_S) as http,
    ):
        first = classify(http, store.store_id, "apple iphone 8").json()
        # Under an abstain threshold no score can reach, every answer abstains.
        version = register_version(
            store, trained_stores["encoder"], abstain_threshold=1.01
        )
        set_champion(store.store_id, version)
        second = wait_for(lambda: answer_of_version(http, store.store_id, version))

    assert first["classifier_version"] == "1"
    assert not first["results"][0]["is_abstained"]
    assert second["results"][0]["is_abstained"]
    assert second["results"][0]["category_id"] is None


def test_broken_version_keeps_old_one_serving(trained_stores, tmp_path):
    store = add_trained_store(tmp_path, "shop-broken", trained_stores["encoder"])

    with (
        start(serve_alias_check_interval_s=0.2) as server,
        httpx.Client(base_url=server.url, timeout=WAIT_S) as http,
    ):
        classify(http, store.store_id, "apple iphone 8")
        version = register_version(store, trained_stores["encoder"])
        corrupt_version(store.store_id, version)
        set_champion(store.store_id, version)
        state = wait_for(lambda: failed_store_state(http, store.store_id))
        answer = classify(http, store.store_id, "apple iphone 8")
        failures = metric_value(
            http, "mkt_classifier_load_failures_total", store_id=store.store_id
        )

    assert state["failed_version"] == version
    assert state["loaded_version"] == "1"
    assert state["champion_version"] == version
    assert f"version {version} failed to load" in state["load_error"]
    assert answer.status_code == 200
    assert answer.json()["classifier_version"] == "1"
    assert failures == 1


def test_broken_first_version_answers_503(trained_stores, tmp_path):
    store = add_trained_store(tmp_path, "shop-broken-first", trained_stores["encoder"])
    corrupt_version(store.store_id, "1")

    with start() as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        first = classify(http, store.store_id, "apple iphone 8")
        again = classify(http, store.store_id, "apple iphone 8")

    assert first.status_code == 503
    assert "version 1 failed to load" in first.json()["detail"]
    assert "mkt rollback shop-broken-first" in first.json()["detail"]
    assert again.status_code == 503
    assert "Next try in" in again.json()["detail"]


def test_removed_store_is_unloaded(trained_stores, tmp_path):
    store = add_trained_store(tmp_path, "shop-removed", trained_stores["encoder"])

    with (
        start(serve_alias_check_interval_s=0.2) as server,
        httpx.Client(base_url=server.url, timeout=WAIT_S) as http,
    ):
        before = classify(http, store.store_id, "apple iphone 8")
        remove_store(serving_engine(), store.store_id)
        after = wait_for(lambda: status_if_not_ok(http, store.store_id))
        listed = [entry["store_id"] for entry in http.get("/stores").json()["stores"]]
        served = metric_value(
            http, "mkt_classifier_served_version", store_id=store.store_id
        )

    assert before.status_code == 200
    assert after == 404
    assert store.store_id not in listed
    assert served == 0


def test_tiny_budget_unloads_least_recently_used(trained_stores):
    with (
        start(serve_memory_budget_mb=0.001) as server,
        httpx.Client(base_url=server.url, timeout=WAIT_S) as http,
    ):
        classify(http, PHONE_STORE, "apple iphone 8")
        classify(http, KITCHEN_STORE, "bosch microwave")
        phones = store_state(http, PHONE_STORE)
        kitchen = store_state(http, KITCHEN_STORE)
        unloads = metric_value(
            http, "mkt_classifier_unloads_total", store_id=PHONE_STORE
        )
        reloaded = classify(http, PHONE_STORE, "apple iphone 8")

    assert phones["loaded_version"] is None
    assert kitchen["loaded_version"] == "1"
    assert unloads == 1
    assert reloaded.status_code == 200


def test_budget_keeps_both_stores_when_they_fit(trained_stores, client):
    classify(client, PHONE_STORE, "apple iphone 8")
    classify(client, KITCHEN_STORE, "bosch microwave")

    assert store_state(client, PHONE_STORE)["loaded_version"] == "1"
    assert store_state(client, KITCHEN_STORE)["loaded_version"] == "1"


def test_statistics_reach_database_on_shutdown(trained_stores):
    started = datetime.now(UTC)

    with start() as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        classify(http, KITCHEN_STORE, "bosch microwave", "smeg fridge freezer")
        classify(http, KITCHEN_STORE, "miele washing machine")
    windows = load_serving_windows(serving_engine(), KITCHEN_STORE, started)

    assert len(windows) == 1
    window = windows[0]
    assert window.classifier_version == "1"
    assert window.request_count == 2
    assert window.name_count == 3
    assert sum(window.score_histogram) == 3
    assert window.latency_p99_ms >= window.latency_p50_ms > 0
    assert len(window.centroid) == 384
    assert window.window_start >= started


def test_statistics_flush_periodically(trained_stores):
    started = datetime.now(UTC)

    with (
        start(serve_stats_flush_interval_s=0.2) as server,
        httpx.Client(base_url=server.url, timeout=WAIT_S) as http,
    ):
        classify(http, PHONE_STORE, "apple iphone 8")
        windows = wait_for(
            lambda: load_serving_windows(serving_engine(), PHONE_STORE, started)
        )

    assert windows[0].request_count == 1
    assert windows[0].abstain_count == 0


def test_mlflow_models_serve_answers_titles(trained_stores):
    from tests.serving.stores import run_mlflow_models_serve

    with run_mlflow_models_serve(PHONE_STORE) as url:
        response = httpx.post(
            f"{url}/invocations",
            json={"dataframe_records": [{"title": "apple iphone x 64gb"}]},
            timeout=WAIT_S,
        )

    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert prediction["category_path"] == "Mobile Phones"
    assert not prediction["is_abstained"]


def test_classify_never_answers_retired_category(trained_stores, client):
    import pandas as pd

    from mkt.catalog import load_store, sync_category_tree
    from mkt.stores.connectors import CategoryRecord

    engine = serving_engine()
    products = load_store(engine, PHONE_STORE).connector.options["products"]
    pairs = pd.read_csv(products, dtype=str)[["category_id", "category_path"]]
    tree = [
        CategoryRecord(category_id, path)
        for category_id, path in pairs.drop_duplicates().itertuples(index=False)
    ]
    tv_id = next(record.external_id for record in tree if record.name == "TVs")
    sync_category_tree(engine, PHONE_STORE, tree)
    sync_category_tree(
        engine, PHONE_STORE, [record for record in tree if record.name != "TVs"]
    )

    try:
        response = classify(client, PHONE_STORE, "samsung 55 inch 4k smart tv", top_k=3)
    finally:
        sync_category_tree(engine, PHONE_STORE, tree)

    answer = response.json()["results"][0]
    assert response.status_code == 200
    assert answer["category_id"] != tv_id
    assert tv_id not in [candidate["category_id"] for candidate in answer["candidates"]]
