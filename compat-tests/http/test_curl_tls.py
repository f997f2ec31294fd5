"""curl over HTTPS: the HTTP door's TLS listener, which here wants a client certificate
of its CA (``client_auth = "required"``). Produce, long-poll consume and ack over TLS;
without a certificate, or with one of another CA, curl gets no HTTP answer at all.
Certificates are made at test time (trustme)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def https(start_module_broker, tls_files, tmp_path_factory) -> str:
    conf = tmp_path_factory.mktemp("https") / "https.toml"
    tls_files.broker_config(conf)
    b = start_module_broker("http", extra_args=("--config", str(conf), "--segment-size",
                                                str(32 << 20)), name="https")
    return f"https://localhost:{tls_files.ports_of(b)['http-tls']}"


def curl(*args: str, cert: bool = True, ca: str | None = None, files=None) -> tuple[int, str]:
    assert CURL, "curl is required (scripts/test installs it)"
    tls = ["--cacert", ca or str(files.ca)]
    if cert:
        tls += ["--cert", str(files.client_cert), "--key", str(files.client_key)]
    out = subprocess.run([CURL, "-sS", "-w", "\n%{http_code}", *tls, *args],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return -out.returncode, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def test_curl_over_https_with_a_client_certificate(https, tls_files) -> None:
    status, body = curl("-X", "POST", f"{https}/v1/topics/tls/messages",
                        "-H", "content-type: application/json",
                        "-d", '{"body": "over https"}', files=tls_files)
    assert status == 201 and json.loads(body)["count"] == 1, body
    status, body = curl(f"{https}/v1/topics/tls/messages?group=g&wait=5", files=tls_files)
    msgs = json.loads(body)["messages"]
    assert [m["body"] for m in msgs] == ["over https"]
    status, _ = curl("-X", "DELETE", f"{https}/v1/topics/tls/messages/{msgs[0]['receipt']}",
                     files=tls_files)
    assert status == 204


def test_curl_without_a_client_certificate_gets_no_answer(https, tls_files) -> None:
    status, err = curl(f"{https}/healthz", cert=False, files=tls_files)
    assert status < 0, (status, err)  # curl's own error code: the TLS handshake failed


def test_curl_refuses_a_broker_of_another_ca(https, tls_files) -> None:
    status, err = curl(f"{https}/healthz", ca=str(tls_files.rogue_cert), files=tls_files)
    assert status == -60, err  # CURLE_PEER_FAILED_VERIFICATION
