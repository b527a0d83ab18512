"""An OpenAI-compatible embeddings endpoint on localhost, for tests of the real langchain-openai code path.

    python tests/fake_openai_server.py PORT KEY [DELAY_MS]

POST /v1/embeddings answers like OpenAI's API (float or base64 encoding), with vectors derived from a hash of
each text (deterministic), of ``dimensions`` (default 64). Requests without ``Authorization: Bearer KEY`` get
401. Each embeddings answer waits DELAY_MS first (default 0), like a remote provider. It counts requests at
GET /stats.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUESTS = {"embeddings": 0}


def vector(text: str, dim: int) -> list[float]:
    out: list[float] = []
    seed = text.encode()
    while len(out) < dim:
        seed = hashlib.sha256(seed).digest()
        out.extend((b - 127.5) / 127.5 for b in seed)
    return out[:dim]


class Handler(BaseHTTPRequestHandler):
    key = ""
    delay_s = 0.0

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, REQUESTS)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            return
        if not self.path.endswith("/embeddings"):
            self._send(404, {"error": {"message": "not found"}})
            return
        REQUESTS["embeddings"] += 1
        time.sleep(self.delay_s)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or 64)
        data = []
        for i, text in enumerate(inputs):
            vec = vector(str(text), dim)
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._send(200, {"object": "list", "data": data, "model": body.get("model", ""),
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


if __name__ == "__main__":
    Handler.key = sys.argv[2]
    Handler.delay_s = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
