"""Markdown pieces that benchmark reports share: the machine description and tables."""

import importlib.metadata
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

LIBRARIES = (
    "numpy pandas scikit-learn faiss-cpu torch transformers sentence-transformers"
)

# One table column: its title, the key of the value in each row and the format spec.
Column = tuple[str, str, str]


def read_proc_field(path: str, field: str) -> str | None:
    """Return the value after `field:` in a /proc file, or None where there is none."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def count_cores() -> int:
    """Return how many CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine() -> list[str]:
    """Return markdown bullet lines naming the CPU, RAM, load, Python and libraries."""
    import torch

    memory_kib = read_proc_field("/proc/meminfo", "MemTotal")
    memory = (
        f"{int(memory_kib.split()[0]) / 2**20:.1f} GiB" if memory_kib else "unknown"
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in LIBRARIES.split()
    )
    return [
        f"- CPU: {read_proc_field('/proc/cpuinfo', 'model name') or 'unknown'}, "
        f"{count_cores()} cores available to the process "
        f"(torch uses {torch.get_num_threads()} threads)",
        f"- RAM: {memory}",
        f"- Python {platform.python_version()}; {versions}",
        # Timings are wall-clock, so the load shows whether other processes slowed them.
        "- Load average at the end of the run (1, 5, 15 min): "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg()),
        f"- Date: {datetime.now(UTC).date().isoformat()}",
    ]


def render_table(columns: list[Column], rows: list[dict], left_count: int) -> str:
    """Render rows as a markdown table, with a dash where a value is None.

    The first `left_count` columns align left and the rest, the numbers, align right.
    """
    titles = [title for title, _, _ in columns]
    alignments = ["---" if i < left_count else "---:" for i in range(len(columns))]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(alignments) + "|"]
    for row in rows:
        cells = [
            "-" if row[key] is None else format(row[key], spec)
            for _, key, spec in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
