"""A small OpenAI-compatible chat-completions server for the critic tests (stdlib only).

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (random free port) by running a real local causal LM
through :func:`reinlm.critic.local.chat_generate`, the same greedy generation LocalCritic uses. Hooks:

- ``server.delay_next(seconds, count=1)``: the next ``count`` requests sleep first (to provoke timeouts);
- ``server.malform_next(count=1)``: the next ``count`` requests get a body that is not JSON;
- ``server.fail_next(status, count=1)``: the next ``count`` requests get that HTTP status;
- ``server.requests``: every request seen (JSON body + the Authorization header), ``server.max_in_flight``;
- ``server.echo = "answer"`` / ``"error"``: every reply quotes the request's headers (Authorization included),
  as the answer's content or in an HTTP 500 body after 250 characters of padding (a leaky server).

Usage::

    with CriticServer(model, tokenizer) as srv:
        HTTPCritic(srv.url, "tiny").critique(["text"], "sentiment")

Run by hand against the embedded model: ``python tests/critic_server.py --port 8000``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reinlm.critic.local import chat_generate


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def do_POST(self):  # noqa: N802 (http.server's naming)
        owner = self.server.owner
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, b'{"error": {"message": "not found"}}')
        length = int(self.headers.get("Content-Length", 0))
        try:
            req = json.loads(self.rfile.read(length))
            messages = req["messages"]
        except (ValueError, KeyError):
            return self._send(400, b'{"error": {"message": "bad request"}}')
        with owner.lock:
            owner.requests.append({"body": req, "authorization": self.headers.get("Authorization")})
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
            delay = owner._take("delay")
            malformed = owner._take("malformed")
            fail = owner._take("fail")
        try:
            if owner.echo:
                headers = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                auth = self.headers.get("Authorization", "")
                if owner.echo == "error":
                    return self._send(500, ("x" * 250 + f" Authorization: {auth}; {headers}").encode())
                content = f'Positive: "{auth}", "Authorization: {auth}"\nNegative: none. ({headers})'
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                return self._send(200, json.dumps(reply).encode())
            if delay:
                time.sleep(delay)
            if fail:
                return self._send(fail, b'{"error": {"message": "injected failure"}}')
            if malformed:
                return self._send(200, b'{"choices": [{"message": {"content": "Positive: trunc')
            with owner.model_lock:  # one generation at a time: the model is shared
                answer = chat_generate(owner.model, owner.tokenizer, [messages],
                                       max_new_tokens=int(req.get("max_tokens") or 48))[0]
            reply = {"id": f"chatcmpl-{len(owner.requests)}", "object": "chat.completion",
                     "model": req.get("model", "local"), "created": int(time.time()),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": answer}}]}
            return self._send(200, json.dumps(reply).encode())
        finally:
            with owner.lock:
                owner.in_flight -= 1


class _Server(ThreadingHTTPServer):
    # handler threads are joined by server_close(): a delayed handler must not still be generating with torch
    # when the interpreter exits (that aborts the process: "terminate called without an active exception")
    daemon_threads = False
    block_on_close = True
    owner: "CriticServer"


class CriticServer:
    """A real HTTP server on 127.0.0.1 answering chat completions with a local model (see module doc)."""

    def __init__(self, model, tokenizer, host: str = "127.0.0.1", port: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.echo: str | None = None
        self._queues: dict[str, list] = {"delay": [], "malformed": [], "fail": []}
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _take(self, kind: str):
        q = self._queues[kind]
        return q.pop(0) if q else None

    def delay_next(self, seconds: float, count: int = 1) -> None:
        with self.lock:
            self._queues["delay"] += [seconds] * count

    def malform_next(self, count: int = 1) -> None:
        with self.lock:
            self._queues["malformed"] += [True] * count

    def fail_next(self, status: int = 500, count: int = 1) -> None:
        with self.lock:
            self._queues["fail"] += [status] * count

    def start(self) -> "CriticServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "CriticServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    from reinlm.hub import load_causal_lm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    m, t = load_causal_lm(a.model, device="cpu")
    srv = CriticServer(m, t, port=a.port).start()
    print(f"serving {a.model} at {srv.url}/chat/completions (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
