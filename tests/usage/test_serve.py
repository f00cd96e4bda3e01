"""`transferkit serve` as a real server process on a free localhost port, answering real HTTP requests.

All traffic goes to 127.0.0.1; request loops are bounded (8 clients x 25 requests) and the server is stopped by
its process id at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli_helpers import EXECUTABLE
from interop_helpers import copy_registry

import transferkit

CLIENTS, REQUESTS_PER_CLIENT = 8, 25
PAIRS = [("A man is sleeping.", "A person sleeps."), ("It rained all day.", "The ground is dry."),
         ("Cats purr.", "Cats make sounds."), ("The bank is closed.", "The bank is open today.")]
MAX_BODY = 4096


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _post(port: int, payload: object) -> tuple[int, dict]:
    return _request(port, "POST", "/predict", json.dumps(payload).encode())


@pytest.fixture(scope="module")
def server(tiny_experts, tmp_path_factory):
    """`transferkit serve tiny-rte tiny-stsb` (tiny-rte also under the alias it is asked for), until the module ends."""
    folder = tmp_path_factory.mktemp("serve")
    url = copy_registry(tiny_experts[0], folder / "registry")
    with transferkit.Registry(url) as registry:
        registry.set_alias("serve-rte", "tiny-rte")
    port = _free_port()
    log = folder / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [EXECUTABLE, "serve", "serve-rte", "tiny-stsb", "--port", str(port), "--max-body-bytes", str(MAX_BODY),
             "--max-inputs", "16", "--max-wait-ms", "20"],
            env={**os.environ, "TRANSFERKIT_REGISTRY": url, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            stdout=handle, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            status, health = _request(port, "GET", "/health")
            if status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not come up: {log.read_text()}")
        time.sleep(0.3)
    yield port, health, log, url
    process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_health_names_the_verified_experts(server, tiny_experts):
    _, health, log, _ = server
    _, experts = tiny_experts
    assert health["status"] == "ok"
    assert {(e["name"], e["sha256"]) for e in health["experts"]} == {
        (experts[k].name, experts[k].artifact_sha256) for k in ("rte", "stsb")}
    assert f"artifact sha256 {experts['rte'].artifact_sha256} verified" in log.read_text()
    assert "serving 2 expert(s) on http://127.0.0.1:" in log.read_text()


def test_concurrent_clients_get_the_labels_predict_gives(server):
    port, url = server[0], server[3]
    with transferkit.Registry(url) as registry:
        expected = [p.to_dict() for p in registry.predict("tiny-rte", PAIRS)]
        scores = [p.score for p in registry.predict("tiny-stsb", PAIRS)]

    def client(number: int) -> list[tuple[int, dict, int]]:
        results = []
        for request in range(REQUESTS_PER_CLIENT):
            start = (number + request) % len(PAIRS)
            chosen = [PAIRS[(start + i) % len(PAIRS)] for i in range(1 + request % 3)]
            expert = ("serve-rte", "tiny-rte", "tiny-stsb")[request % 3]  # by the alias it was started with, by name
            status, body = _post(port, {"expert": expert, "inputs": [list(p) for p in chosen]})
            results.append((status, body, start))
        return results

    before = _request(port, "GET", "/health")[1]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for batch in pool.map(client, range(CLIENTS)) for a in batch]
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT == 200
    assert all(status == 200 for status, _, _ in answers), [b for s, b, _ in answers if s != 200][:3]
    for status, body, start in answers:
        for offset, prediction in enumerate(body["predictions"]):
            index = (start + offset) % len(PAIRS)
            if body["expert"]["name"] == "tiny-rte":
                assert prediction["label"] == expected[index]["label"]
                assert prediction["probabilities"] == pytest.approx(expected[index]["probabilities"], abs=1e-4)
            else:
                assert prediction["label"] is None and prediction["score"] == pytest.approx(scores[index], abs=1e-4)
    after = _request(port, "GET", "/health")[1]
    assert after["requests"] - before["requests"] == 200
    assert after["batches"] - before["batches"] < 200  # concurrent requests shared forward passes


@pytest.mark.parametrize("body,status,fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "send a JSON object"),
    (json.dumps({"expert": "tiny-rte", "inputs": "a string"}).encode(), 400, "send a JSON object"),
    (json.dumps({"expert": "tiny-rte", "inputs": []}).encode(), 400, "inputs is empty"),
    (json.dumps({"expert": "tiny-rte", "inputs": [["a", "b"]], "extra": 1}).encode(), 400, "unknown field 'extra'"),
    (json.dumps({"expert": "tiny-rte", "inputs": [5]}).encode(), 400, "each input is a text"),
    (json.dumps({"expert": "nope", "inputs": [["a", "b"]]}).encode(), 404, "expert 'nope' is not served here"),
    (json.dumps({"inputs": [["a", "b"]]}).encode(), 400, "is not served here"),  # two experts served: name one
    (json.dumps({"expert": "tiny-rte", "inputs": [["only one"]]}).encode(), 422, "reads 2"),
    (json.dumps({"expert": "tiny-rte", "inputs": [["a", " "]]}).encode(), 422, "text 2 is empty"),
    (json.dumps({"expert": "tiny-rte", "inputs": [["a", "b"]] * 17}).encode(), 413, "limit is 16"),
    (json.dumps({"expert": "tiny-rte", "inputs": [["x" * 3000, "y" * 3000]]}).encode(), 413, "limit is 4,096"),
])
def test_bad_requests_get_a_4xx_and_a_json_error(server, body, status, fragment):
    answered, payload = _request(server[0], "POST", "/predict", body)
    assert answered == status and fragment in payload["error"], payload


def test_an_oversize_body_without_content_length_is_cut_off_while_read(server):
    connection = http.client.HTTPConnection("127.0.0.1", server[0], timeout=60)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.putheader("Content-Type", "application/json")
        connection.endheaders()
        chunk = b'{"expert": "tiny-rte", "inputs": [["' + b"z" * 2000
        for _ in range(4):
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_serve_refuses_unknown_experts_before_binding(tiny_experts, tmp_path):
    result = subprocess.run([EXECUTABLE, "serve", "no-such-expert", "--port", str(_free_port())],
                            env={**os.environ, "TRANSFERKIT_REGISTRY": tiny_experts[0], "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: no expert has the id, name or alias")
