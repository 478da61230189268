"""What `logship serve` costs before and per request (issue 11/16, the quiet A/B): it starts without the
libraries only some routes need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .support import ROOT

# pyarrow alone is ≈ 40 MB of RSS; the listing (the catalog) and SQL import theirs when first asked
HEAVY = ("pyarrow", "duckdb", "shipper.catalog", "shipper.query")
STARTUP = """
import json, sys
from api import server
from api.app import create_app
from shipper.config import load_config
create_app(load_config())
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'duckdb')
                        or m.startswith(('shipper.catalog', 'shipper.query')))))
"""


def test_the_api_starts_without_the_libraries_of_the_listing_and_sql(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path / 'store'}"}
    out = subprocess.run([sys.executable, "-c", STARTUP], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.startswith(HEAVY)], loaded
