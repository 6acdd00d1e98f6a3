"""The server package must load without importing Prefect, which only flows and the CLI use."""

import subprocess
import sys
from pathlib import Path


def test_server_module_imports_no_prefect():
    code = "import sys, mkt.serving; print('prefect' in sys.modules)"

    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )

    assert loaded.stdout.strip() == "False"
