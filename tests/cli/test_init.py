"""`contextkit init` writes a repo whose local state stays out of git (issue 18 item 9)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "contextkit"


def test_init_writes_a_gitignore_for_local_state_and_secrets(tmp_path):
    exe = str(CLI) if CLI.exists() else shutil.which("contextkit")
    result = subprocess.run(
        [exe, "init", "shop"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    ignored = (tmp_path / "shop" / ".gitignore").read_text().splitlines()
    assert ".contextkit/" in ignored and ".env" in ignored and "__pycache__/" in ignored
    # The sample data the repo's views read is not ignored: a clone must plan as it is.
    assert not any(line.startswith("data") for line in ignored)
    assert (tmp_path / "shop" / "data" / "orders.csv").exists()
