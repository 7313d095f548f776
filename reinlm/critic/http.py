"""An OpenAI-compatible ``/v1/chat/completions`` endpoint as the critic (stdlib urllib, thread pool).

Each conversation is one POST ``{"model", "messages", "temperature": 0, "max_tokens"}``. A request that
times out, cannot connect, or gets HTTP 408/409/429/5xx is retried up to ``max_retries`` times, waiting
``backoff * 2**attempt`` seconds (plus up to 10% jitter) between tries; at most ``concurrency`` requests
are in flight. A reply that is not JSON with ``choices[0].message.content`` is *unparseable* (not
retried: a server that answers badly once usually does again). Nothing here raises for a failed request.

The API key is read from the environment variable named by ``api_key_env`` at each request and sent as
``Authorization: Bearer ...``; it never appears in logs, errors, answers or ``repr``: every text that comes
back from the server (answers, error bodies) goes through :func:`reinlm.utils.redact.redact_secrets` in full,
before any cut to a length, so a server that echoes the request headers leaks no part of the key.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from reinlm.config.coerce import check_range
from reinlm.critic.align import FUZZY_THRESHOLD
from reinlm.critic.base import Completion, CriticBackend
from reinlm.errors import ConfigError
from reinlm.utils.redact import redact_secrets, register_secret

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def chat_completions_url(url: str) -> str:
    """Accept a base URL (``http://host:port`` or ``.../v1``) or the full endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class HTTPCritic(CriticBackend):
    """Critic behind an OpenAI-compatible chat-completions endpoint.

    Args:
        url: base URL or full ``/v1/chat/completions`` endpoint.
        model: the model name sent in each request.
        api_key_env: environment variable holding the API key (unset: no Authorization header).
        timeout: seconds per request attempt.
        max_retries: retries after the first attempt (timeouts, connection errors, 408/409/429/5xx).
        backoff: base of the exponential wait between attempts, in seconds.
        concurrency: most requests in flight at once.
        max_answer_tokens: ``max_tokens`` of each request.
    """

    def __init__(self, url: str, model: str = "default", api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0,
                 max_retries: int = 2, backoff: float = 1.0, concurrency: int = 4, max_answer_tokens: int = 48,
                 fuzzy_threshold: float = FUZZY_THRESHOLD):
        if not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"critic_url: got {url!r}; allowed: an http:// or https:// URL of an OpenAI-compatible "
                              "server (e.g. http://127.0.0.1:8000/v1).")
        check_range("critic_timeout", timeout, 0, lo_open=True)
        check_range("critic_max_retries", max_retries, 0)
        check_range("critic_backoff", backoff, 0)
        check_range("critic_concurrency", concurrency, 1)
        self.url = chat_completions_url(url)
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.concurrency, self.max_answer_tokens = int(concurrency), int(max_answer_tokens)
        self.fuzzy_threshold = fuzzy_threshold

    def __repr__(self) -> str:  # no key, ever
        return f"HTTPCritic(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def complete(self, conversations: list[list[dict]]) -> list[Completion]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self._request(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._request, conversations))

    # ------------------------------------------------------------------ one request
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            register_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, message: str) -> str:
        register_secret(os.environ.get(self.api_key_env) if self.api_key_env else None)
        return redact_secrets(message)

    def _request(self, messages: list[dict]) -> Completion:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_answer_tokens}).encode()
        last = Completion(None, "error", "no attempt made")
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + 0.1 * random.random()))
            last, retry = self._attempt(body)
            if not retry:
                return last
            log.debug("critic request attempt %d failed: %s", attempt + 1, last.error)
        return last

    def _attempt(self, body: bytes) -> tuple[Completion, bool]:
        """One POST: (completion, whether a retry may help)."""
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = self._redact(e.read(65536).decode("utf-8", "replace"))[:300] if e.fp else ""
            return Completion(None, "error", f"HTTP {e.code} from {self.url}: {detail}".strip()), e.code in RETRY_STATUS
        except (TimeoutError, socket.timeout) as e:
            return Completion(None, "timeout", f"no reply from {self.url} within {self.timeout:g} s ({e})"), True
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return Completion(None, "timeout", f"no reply from {self.url} within {self.timeout:g} s"), True
            return Completion(None, "error", f"cannot reach {self.url}: {e.reason}"), True
        except (ConnectionError, OSError) as e:  # reset mid-reply, truncated body
            return Completion(None, "error", f"connection to {self.url} failed: {type(e).__name__}"), True
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            snippet = self._redact(raw[:65536].decode("utf-8", "replace"))[:120]
            return Completion(None, "unparseable", f"malformed reply from {self.url} ({type(e).__name__}): "
                                                   f"{snippet!r}"), False
        return Completion(self._redact(content).strip()), False  # a server may echo the request headers
