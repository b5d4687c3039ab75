"""A scripted OpenAI-compatible server on 127.0.0.1 (real HTTP) for tests and benchmarks.

The last user message steers it with markers (``k`` = how many times, then it answers):
    [[429:k]] [[500:k]]     that status (429 with ``Retry-After: 0.05``) for the first k calls
    [[400]] [[401]] [[404]] that status, always
    [[badbody:k]]           a 200 whose body is not JSON
    [[badjson:k]]           content that is not the JSON asked for
    [[truncate:k]]          finish_reason "length"
    [[hang]]                no answer for 30 s
    [[delay:MS]]            answer after MS milliseconds
    [[json:{...}]]          this content
Otherwise it echoes the prompt (``echo: <message>``), and answers JSON requests with
``{"score": 3, "reason": "fine", "rationale": "fine"}``. ``server.requests`` counts requests.

``routes``: ``[(regex, reply)]`` checked in order against all message contents joined (after
the status, badbody, hang and delay markers): the first match answers with ``reply``, a string
or ``reply(body) -> str | (str, finish_reason)``, so tests can script multi-step prompts.

``port``: listen there (a restarted endpoint). ``status``: answer every request with that HTTP
status. ``stop_after``: stop listening once that many requests were answered (an endpoint that
goes down mid-stage). ``reject_json_schema``: a 400 naming ``response_format`` for schemas in the
OpenAI ``json_schema`` form (as some servers do). ``seen`` counts requests per first user message;
pass one ``Counter`` to several servers to count across restarts.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 resets bursts of new connections


class ScriptedServer:
    def __init__(self, latency_s: float = 0.0, routes: list | None = None, port: int = 0,
                 status: int | None = None, stop_after: int | None = None,
                 reject_json_schema: bool = False, seen: Counter | None = None):
        self.latency_s, self.status, self.stop_after = latency_s, status, stop_after
        self.reject_json_schema = reject_json_schema
        self.down = False
        self.forms: Counter = Counter()  # response_format types received
        self.routes = [(re.compile(pattern, re.S), reply) for pattern, reply in routes or []]
        self.requests = 0
        self.inflight = self.max_inflight = 0
        self.seen: Counter = Counter() if seen is None else seen
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            wbufsize = 1 << 16  # headers and body leave in one write (no delayed-ACK stall)

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                if server.down:  # a kept-alive connection of a server gone down: drop it
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    status, payload, headers = server.answer(body)
                finally:
                    with server.lock:
                        server.inflight -= 1
                if isinstance(payload, bytes):
                    self._raw(status, payload, headers)
                else:
                    self._send(status, payload, headers)
                if server.stop_after is not None and server.requests >= server.stop_after:
                    server.go_down()

            def _send(self, status, payload, headers=None):
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = _Server(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.go_down()

    def go_down(self) -> None:
        """Stop listening: later connections are refused."""
        with self.lock:
            if self.down:
                return
            self.down = True
        threading.Thread(target=self._shutdown, daemon=True).start()
        self.httpd.socket.close()  # refuse at once, even before serve_forever notices

    def _shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def answer(self, body: dict):
        messages = body.get("messages", [])
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        form = (body.get("response_format") or {}).get("type")
        with self.lock:
            self.requests += 1
            self.forms[form] += 1
            self.seen[first_user] += 1
            count = self.seen[first_user]
        if self.status is not None:
            return self.status, {"error": {"message": f"scripted {self.status}"}}, {}
        if self.reject_json_schema and form == "json_schema":
            return 400, {"error": {"message": "response_format: json_schema is not supported",
                                   "param": "response_format"}}, {}
        if self.latency_s:
            time.sleep(self.latency_s)

        def marker(name: str) -> int | None:
            found = re.search(r"\[\[" + name + r"(?::(\d+))?\]\]", first_user)
            if not found:
                return None
            return int(found.group(1)) if found.group(1) else 10**9

        for status in (429, 500, 400, 401, 404):
            times = marker(str(status))
            if times is not None and count <= times:
                headers = {"Retry-After": "0.05"} if status == 429 else {}
                return status, {"error": {"message": f"scripted {status}", "type": "scripted"}}, headers
        if (times := marker("badbody")) is not None and count <= times:
            return 200, b"{not json at all", {}
        if "[[hang]]" in first_user:
            time.sleep(30)
        if (delay := re.search(r"\[\[delay:(\d+)\]\]", first_user)):
            time.sleep(int(delay.group(1)) / 1000)
        finish = "stop"
        wants_json = form in ("json_object", "json_schema") or "JSON" in last
        everything = "\n".join(str(m.get("content", "")) for m in messages)
        route = next((reply for pattern, reply in self.routes if pattern.search(everything)), None)
        if route is not None:
            content = route(body) if callable(route) else route
            if isinstance(content, tuple):
                content, finish = content
        elif (times := marker("truncate")) is not None and count <= times:
            content, finish = '{"score": 3, "reas', "length"
        elif (times := marker("badjson")) is not None and count <= times:
            content = "I think it is pretty good, maybe a three."
        elif (given := re.search(r"\[\[json:(\{.*?\})\]\]", first_user)):
            content = given.group(1)
        elif wants_json:
            content = json.dumps({"score": 3, "reason": "fine", "rationale": "fine"})
        else:
            content = f"echo: {last}"
        n = int(body.get("n") or 1)
        choices = [{"index": i, "finish_reason": finish,
                    "message": {"role": "assistant", "content": content if n == 1 else f"{content} #{i}"}}
                   for i in range(n)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n * len(content.split()),
                 "total_tokens": prompt_tokens + n * len(content.split())}
        return 200, {"id": f"cmpl-{count}", "object": "chat.completion", "created": int(time.time()),
                     "model": body.get("model", "scripted"), "choices": choices, "usage": usage}, {}


def main() -> None:
    """Serve in its own process: ``python -m tests.llm_server --latency 0.2 --port 8123``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port-file", required=True, help="write the chosen port here")
    parser.add_argument("--routes", default=os.environ.get("SCRIPTED_ROUTES"),
                        help="module:NAME of a routes list, e.g. bench.synthetic:ROUTES "
                             "(default: $SCRIPTED_ROUTES)")
    args = parser.parse_args()
    routes = None
    if args.routes:
        import importlib

        module, _, name = args.routes.partition(":")
        routes = getattr(importlib.import_module(module), name)
    server = ScriptedServer(latency_s=args.latency, routes=routes)
    with open(args.port_file, "w") as fh:
        fh.write(str(server.httpd.server_address[1]))
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
