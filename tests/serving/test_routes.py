"""Tests of the route helpers that need no server."""

import threading

import faiss

from mkt.serving.routes import SEARCH_THREAD_COUNT, limit_search_threads


def test_search_threads_set_per_thread():
    seen: dict[str, int] = {}

    def search_thread() -> None:
        faiss.omp_set_num_threads(2)
        limit_search_threads()
        seen["search"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=search_thread)
    thread.start()
    thread.join()

    assert seen["search"] == SEARCH_THREAD_COUNT == 1
