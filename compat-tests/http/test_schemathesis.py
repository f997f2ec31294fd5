"""schemathesis fuzzes /openapi.json against a running broker: no 5xx, and every status,
content type, header and body is the one the document declares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKS = ",".join((
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",
))

# A request that breaks the schema may be refused by any of these (431: a generated
# header or query string longer than the door's head limit).
CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 413, 415, 422, 431]
"""


def test_openapi_document_holds_under_fuzzing(start_http_broker, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "st"
    assert st.exists(), "schemathesis is required (pip install -e '.[test]')"
    toml = tmp_path / "ferrymq.toml"
    # Short long polls and streams: the fuzzer waits for every answer.
    toml.write_text("[http]\nmax_wait_s = 0.2\nstream_max_s = 0.3\n")
    b = start_http_broker("http", extra_args=("--config", str(toml)))
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    out = subprocess.run(
        [str(st), "--config-file", str(tmp_path / "schemathesis.toml"), "run",
         f"http://{b.address('http')}/openapi.json", "--checks", CHECKS,
         "--max-examples", "25", "--workers", "1", "--seed", "20261122",
         "--request-timeout", "10"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    tail = out.stdout[-6000:]
    assert out.returncode == 0, tail
    assert "passed" in tail
    assert b.alive, "the broker survived the fuzzing"
