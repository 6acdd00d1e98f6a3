"""Tests of the MLflow pyfunc flavour against the in-process classifier."""

import json
from dataclasses import dataclass

import pandas as pd
import pytest

from mkt.classifier_pyfunc import StoreClassifierModel
from mkt.embeddings import encode_titles
from mkt.features import LexicalBlock
from mkt.tuning import LabelledNames, VoteSettings, build_classifier
from tests.conftest import SAMPLE_PRODUCTS

TITLES = [
    "apple iphone xr 64gb red",
    "sony kd55xg8196 55 inch 4k tv",
    "  ",
    "amd ryzen 5 3600 processor",
]


@dataclass
class ArtifactContext:
    """The one attribute of MLflow's PythonModelContext that load_context reads."""

    artifacts: dict[str, str]


@pytest.mark.slow
def test_pyfunc_answers_as_the_in_process_classifier(tmp_path, encoder):
    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str).groupby("category_id").head(30)
    names = LabelledNames(
        encode_titles(encoder, frame["title"].tolist()),
        frame["title"].tolist(),
        frame["category_id"].tolist(),
    )
    paths = dict(zip(frame["category_id"], frame["category_path"]))
    classifier = build_classifier(
        names, paths, VoteSettings(10, 0.05, 0.5, 0.3), lexical_dimension=32
    )
    folder = tmp_path / "classifier"
    classifier.save(folder)
    metadata = {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2"}
    (folder / "metadata.json").write_text(json.dumps(metadata))

    model = StoreClassifierModel()
    model.load_context(ArtifactContext({"classifier": str(folder)}))
    result = model.predict(None, pd.DataFrame({"title": TITLES}), {"top_k": 2})

    answered_titles = [TITLES[0], TITLES[1], TITLES[3]]
    expected = classifier.predict(
        encode_titles(encoder, answered_titles), top_k=2, titles=answered_titles
    )
    assert isinstance(model.classifier.lexical_block, LexicalBlock)
    answered = result.drop(index=2)
    assert answered["category_id"].tolist() == [p.category_id for p in expected]
    assert answered["score"].tolist() == pytest.approx([p.score for p in expected])
    assert result.loc[2, "is_abstained"]
