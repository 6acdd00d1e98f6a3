"""The MLflow pyfunc flavour of a store's classifier: titles in, categories out.

It embeds the titles itself, so `mlflow models serve` answers raw product names.
"""

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

DEFAULT_TOP_K = 3
OUTPUT_COLUMNS = [
    "title",
    "category_id",
    "category_path",
    "score",
    "is_abstained",
    "candidates",
]


class StoreClassifierModel(mlflow.pyfunc.PythonModel):
    """Classify product titles with a store's embedding model and FAISS classifier."""

    def load_context(self, context) -> None:
        """Load the classifier from the logged artifacts; the encoder loads on first use."""
        from mkt.classifier import KnnClassifier
        from mkt.fine_tuning import resolve_embedding_model

        folder = Path(context.artifacts["classifier"])
        self.classifier = KnnClassifier.load(folder)
        self.metadata = json.loads((folder / "metadata.json").read_text())
        # A fine-tuned encoder is installed under the mkt home here, so it stays
        # after MLflow's downloaded artifacts are removed.
        self.embedding_model = resolve_embedding_model(folder, self.metadata)
        self._encoder = None

    # The pandas hint keeps MLflow from wrapping predict() with its own input conversion;
    # the logged signature validates the input instead.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Return the best category, its score, the abstain flag and top-k candidates per title."""
        from mkt.classifier import Prediction
        from mkt.embeddings import encode_titles, load_encoder
        from mkt.titles import clean_title

        titles = titles_from_input(model_input)
        top_k = int((params or {}).get("top_k", DEFAULT_TOP_K))
        if self._encoder is None:
            self._encoder = load_encoder(self.embedding_model)
        cleaned = [clean_title(title) for title in titles]
        # Empty names carry no signal, so they get an abstention instead of a guess.
        positions = [i for i, title in enumerate(cleaned) if title]
        predictions = [Prediction(None, None, 0.0)] * len(titles)
        if positions:
            kept_titles = [cleaned[i] for i in positions]
            embeddings = encode_titles(self._encoder, kept_titles)
            # NOTE: without the product database this model cannot apply the store's
            # label map, so it may return a category removed since training.
            found = self.classifier.predict(embeddings, top_k=top_k, titles=kept_titles)
            for position, prediction in zip(positions, found):
                predictions[position] = prediction
        return predictions_frame(titles, predictions)


def titles_from_input(model_input) -> list[str]:
    """Accept a DataFrame with a `title` column (or a single column), a Series or a list."""
    if isinstance(model_input, pd.DataFrame):
        column = "title" if "title" in model_input.columns else model_input.columns[0]
        return [str(value) for value in model_input[column].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(value) for value in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(value) for value in model_input]


def predictions_frame(titles: list[str], predictions) -> pd.DataFrame:
    """Lay predictions out as the pyfunc output table."""
    rows = [
        {
            "title": title,
            "category_id": prediction.category_id,
            "category_path": prediction.category_path,
            "score": float(prediction.score),
            "is_abstained": prediction.is_abstained,
            "candidates": json.dumps(
                [
                    {
                        "category_id": c.category_id,
                        "category_path": c.category_path,
                        "score": c.score,
                    }
                    for c in prediction.candidates
                ],
                ensure_ascii=False,
            ),
        }
        for title, prediction in zip(titles, predictions)
    ]
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
