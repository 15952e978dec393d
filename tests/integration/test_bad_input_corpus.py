"""Replays every case of the bad-input corpus (tests/data/bad/, written by its
make_corpus.py) against a real ``heaprelay serve``: the exact status and ``code``, a JSON
``{"code", "message"}`` for every refusal the relay makes, and nothing stored for any
refusal (the queue's job count is unchanged)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from _served import ServedRelay, basic

CORPUS = Path(__file__).parent.parent / "data" / "bad"
CASES = sorted(p.stem for p in CORPUS.glob("*.json"))


def test_corpus_size(capsys: pytest.CaptureFixture[str]) -> None:
    bodies = sorted(p.stem for p in CORPUS.glob("*.body"))
    assert bodies == CASES
    assert len(CASES) >= 100
    with capsys.disabled():
        print(f"\nbad-input corpus: {len(CASES)} cases in {CORPUS}")


def send_raw(relay: ServedRelay, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((relay.host, relay.port), timeout=30) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("name", CASES)
def test_bad_input_case(served_relay: ServedRelay, name: str) -> None:
    case: dict[str, Any] = json.loads((CORPUS / f"{name}.json").read_text())
    body = (CORPUS / f"{name}.body").read_bytes()
    before = served_relay.jobs()
    if case["raw"]:
        status, headers, content = send_raw(served_relay, body)
    else:
        sent = dict(case["headers"])
        if case["key"] is not None:
            sent["authorization"] = basic(case["key"])
        answer = served_relay.http.post(case["route"], content=body, headers=sent)
        status, headers, content = answer.status_code, dict(answer.headers), answer.content
    assert status == case["status"], (name, content[:300])
    if case["code"] is not None:
        assert headers["content-type"].startswith("application/json"), name
        data = json.loads(content)
        assert data["code"] == case["code"], (name, data)
        assert isinstance(data["message"], str)
        assert data["message"], name
    elif status >= 400:
        assert content, name  # the HTTP layer's one-line reason
    assert served_relay.jobs() == before + case["stored"], name
