"""Endpoint failures are not a record's fault: they stop the stage instead of rejecting records.

A request that finally fails is one of two things:

- a record's failure: a 400 or 422 for one prompt (too long, refused), a content filter, a reply
  that stays invalid JSON after the repair attempts, a truncated reply. The record is rejected
  with its reason and the stage goes on;
- the endpoint's failure: :class:`EndpointError`. Nothing of the stage is committed, the run
  exits non-zero with one message (the endpoint, the model, the last status, what to check, the
  log), and the answers already received stay in the response cache, so the rerun pays for
  nothing twice.

Which is which (the circuit breaker):

- 401/403 (a bad or missing key) and 404 (a wrong URL or model): the endpoint's at once, on the
  first such reply, never retried;
- connection refused or reset, DNS errors: retried for ``max_retries`` attempts and at least
  ``reconnect_s`` seconds (time for the embedded teacher's watchdog to restart a dead server);
  then the endpoint's at once;
- timeouts, 429 and 5xx that persist after ``max_retries`` retries: the breaker opens when
  ``breaker_consecutive`` of them finish in a row, or when ``breaker_window // 2`` of the last
  ``breaker_window`` finished requests failed so (several samples of one prompt count once);
  below that they are rejected records (``llm_timeout``, ``llm_error:503``), as one prompt can
  time out on its own;
- a 400/422 is a record's failure, unless none of the first ``breaker_window`` requests
  succeeded: then a parameter or the prompt size does not suit the endpoint at all.

Once open, the breaker fails every later request at once, so a stage stops within a few
requests instead of waiting out thousands.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

AUTH = {401, 403}
FATAL = AUTH | {404}


class EndpointError(RuntimeError):
    """The LLM endpoint failed (not a record): the stage stops and is not committed."""


@dataclass
class Endpoint:
    """What a failure message says about the endpoint (never the key itself)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    key: str = ""
    log: str | None = None  # the embedded teacher's log file
    embedded: bool = False

    def describe(self) -> str:
        who = "the embedded teacher" if self.embedded else "LLM endpoint"
        return f"{who} {self.base_url} (model {self.model!r})"

    def hint(self, status: int | None, kind: str) -> str:
        if status in AUTH:
            if self.api_key_env:
                return (f"the key in ${self.api_key_env} ([llm] api_key_env) was refused: "
                        "check that it is valid and allowed to use this model")
            return ("the endpoint wants a key: put it in an environment variable and name that "
                    "variable in [llm] api_key_env")
        if status == 404:
            return ("check [llm] base_url (OpenAI-compatible servers answer under .../v1) and "
                    "[llm] model (a name the endpoint serves: GET <base_url>/models lists them)")
        if kind == "connection":
            if self.embedded:
                return "the teacher process is not answering"
            return "is the server running and reachable from this machine at [llm] base_url?"
        return ("the endpoint keeps failing or is overloaded: check its health, lower [llm] "
                "max_concurrency or raise [llm] timeout_s")

    def scrub(self, text: str) -> str:
        return text.replace(self.key, "<key>") if self.key and len(self.key) >= 4 else text

    def error(self, status: int | None, kind: str, detail: str, what: str) -> EndpointError:
        lines = [f"{self.describe()} failed: {what}",
                 f"  last error: {self.scrub(detail)[:400]}",
                 f"  check: {self.hint(status, kind)}"]
        if self.log:
            lines.append(f"  log: {self.log}")
        lines.append("  answers already received are cached: the rerun resumes without paying "
                     "for them again")
        return EndpointError("\n".join(lines))


class Breaker:
    """Counts endpoint-level failures by completion order; opens once for the client's life."""

    def __init__(self, endpoint: Endpoint, consecutive: int = 3, window: int = 20):
        self.endpoint, self.consecutive, self.window = endpoint, consecutive, window
        self.recent: deque[bool] = deque(maxlen=window)  # True: an endpoint-level failure
        self.in_a_row = 0
        self.streak: set[str] = set()  # the prompts of the current run of failures
        self.succeeded, self.refused = False, 0
        self.opened: EndpointError | None = None

    def check(self) -> None:
        """Raise the breaker's error if it is open (before sending a request)."""
        if self.opened is not None:
            raise self.opened

    def success(self) -> None:
        self.recent.append(False)
        self.in_a_row, self.succeeded = 0, True
        self.streak.clear()

    def record_level(self, status: int, detail: str) -> EndpointError | None:
        """A request refused for its own sake (400/422); the error if no request ever succeeded
        and ``window`` were refused so."""
        self.recent.append(False)
        self.in_a_row = 0
        self.streak.clear()
        self.refused += 1
        if not self.succeeded and self.refused >= self.window:
            return self.open(status, "status", detail, f"none of the first {self.refused} requests "
                             "succeeded: a parameter or the prompt size does not suit this endpoint")
        return None

    def open(self, status: int | None, kind: str, detail: str, what: str) -> EndpointError:
        if self.opened is None:
            self.opened = self.endpoint.error(status, kind, detail, what)
        return self.opened

    def failure(self, status: int | None, kind: str, detail: str,
                prompt: str = "") -> EndpointError | None:
        """Record a failure that persisted after the retries; the error if the breaker opens.
        ``prompt`` identifies the request's messages: another sample of a prompt that already
        failed in this run of failures is that prompt's problem, not more evidence."""
        if status in FATAL:
            return self.open(status, kind, detail, f"HTTP {status}")
        if kind == "connection":
            return self.open(status, kind, detail, "it refused or dropped the connection")
        if prompt and prompt in self.streak:
            return None
        self.streak.add(prompt)
        self.recent.append(True)
        self.in_a_row += 1
        failed = sum(self.recent)
        if self.in_a_row >= self.consecutive:
            return self.open(status, kind, detail, f"{self.in_a_row} requests in a row failed "
                                                   "after their retries")
        if failed >= max(self.consecutive, self.window // 2):
            return self.open(status, kind, detail, f"{failed} of the last {len(self.recent)} "
                                                   "requests failed after their retries")
        return None
