"""The `mkt classify` command: classify product names with a store's champion."""

import json
import sys
from typing import Annotated

import typer

from mkt.cli.console import out, reports_errors


@reports_errors
def classify(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
    names: Annotated[list[str], typer.Argument(help="Product names to classify.")],
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, max=50, help="Candidates per name.")
    ] = 3,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object per line instead of a table."
        ),
    ] = False,
) -> None:
    """Classify product names with the store's @champion classifier.

    Categories removed from the store's tree since training are replaced by their
    redirect target, or left out when retired.

    Examples:
        mkt classify pricerunner-uk "apple iphone 8 plus 64gb silver"
        mkt classify pricerunner-uk "bosch serie 4 dishwasher" --top-k 5 --json
    """
    import pandas as pd

    from mkt.catalog import load_store
    from mkt.flows.context import open_database
    from mkt.label_map import load_label_map, remap_predictions_frame
    from mkt.registry import configure_mlflow, load_champion
    from mkt.settings import Settings

    settings = Settings()
    engine = open_database(settings)
    load_store(engine, store_id)
    configure_mlflow(settings)
    classifier = load_champion(store_id)
    result = classifier.predict(pd.DataFrame({"title": names}), params={"top_k": top_k})
    result = remap_predictions_frame(result, load_label_map(engine, store_id))

    if as_json:
        for row in result.to_dict(orient="records"):
            row["candidates"] = json.loads(row["candidates"])
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    out.print(predictions_table(result))


def predictions_table(result):
    """Return predictions as a rich table, one row per name and candidate."""
    from rich.table import Table

    table = Table("name", "category", "score")
    for row in result.to_dict(orient="records"):
        candidates = json.loads(row["candidates"])
        first = "(abstained) " if row["is_abstained"] else ""
        for position, candidate in enumerate(candidates):
            table.add_row(
                row["title"] if position == 0 else "",
                f"{first if position == 0 else ''}{candidate['category_path']}",
                f"{candidate['score']:.3f}",
            )
    return table
