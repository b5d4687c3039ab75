"""The LLM layer: one OpenAI-compatible client for every stage that talks to a model.

- ``AsyncOpenAI`` against any endpoint (OpenAI, vLLM, llama.cpp server), with at most
  ``max_concurrency`` requests in flight. On Ray the runner hosts one client in a single async
  actor per run, so the limit holds for the whole run however many workers send requests.
- Retries with exponential backoff and full jitter on 429 (honouring ``Retry-After``), 5xx,
  timeouts and dropped connections; 400/401/403/404/422 are not retried.
- Endpoint failures (a bad key, a wrong URL or model, a dead or failing server) raise
  :class:`~pipeline.endpoint.EndpointError` through a circuit breaker (``pipeline/endpoint.py``):
  the stage stops uncommitted. Only a record's own failures become rejected records.
- A persistent SQLite response cache (WAL, safe for several processes and runs) keyed by a hash
  of (model, messages, sampling parameters, seed, n): a rerun makes no request it already paid for.
- ``json_model``: asks for JSON, validates it against a pydantic model, and makes a bounded number
  of repair attempts; a completion cut by ``finish_reason == "length"`` is a truncation, never
  parsed as if whole.
- A record's call that finally fails is a ``Result`` with ``error`` (``llm_error:400``,
  ``llm_timeout``, ``llm_truncated``, ``llm_invalid_json``, ``llm_content_filter`` ...), which
  stages turn into rejected records.
- JSON schemas travel in the OpenAI ``json_schema`` form to external endpoints (OpenAI, vLLM,
  SGLang, llama.cpp's llama-server, Ollama); an endpoint that rejects the form (a 400/422, or
  the 500 of llama-cpp-python's server, naming
  ``response_format``) moves the client, once, to the next form: ``llama_cpp``, then ``none``.
- Usage (requests, cache hits, failures, prompt/completion tokens) per stage and model.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import os
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.cache import ResponseCache
from pipeline.endpoint import FATAL, Breaker, Endpoint, EndpointError

NO_RETRY = {400, 401, 403, 404, 422}
SCHEMA_FALLBACK = {"openai": "llama_cpp", "llama_cpp": "none"}
# the HTTP library the installed openai client is built on (httpx2 in recent releases)
_HTTP = importlib.import_module("httpx2" if hasattr(openai._base_client, "httpx2") else "httpx")


class LLMConfig(BaseModel):
    """``[llm]``: the endpoint and sampling defaults of a run."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None  # None: the embedded teacher (llama.cpp serving SmolLM2-135M)
    model: str = "SmolLM2-135M-Instruct"
    api_key_env: str | None = None  # the NAME of the environment variable holding the key
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)
    seed: int | None = 0
    max_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    reconnect_s: float = Field(default=30.0, ge=0)  # keep retrying a refused connection this long
    breaker_consecutive: int = Field(default=3, ge=1)  # endpoint failures in a row that stop a stage
    breaker_window: int = Field(default=20, ge=2)  # ... or half of this many recent requests
    backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    repair_attempts: int = Field(default=2, ge=0)
    # how a JSON schema travels with a request: "llama_cpp" (response_format.schema, enforced by
    # a grammar), "openai" (response_format json_schema), "none" (json_object only); "auto" is
    # llama_cpp for the embedded teacher and openai otherwise, falling back once per run to the
    # next form (llama_cpp, then none) if the endpoint rejects it
    json_schema: str = Field(default="auto", pattern="^(auto|llama_cpp|openai|none)$")
    cache: str | None = None  # SQLite file; default runs/NAME/llm-cache/cache.sqlite


@dataclass
class Request:
    """One chat completion. Sampling fields left None take the ``[llm]`` defaults (``top_p``)
    or are not sent (``stop``, the penalties); whatever is sent is part of the cache key."""

    messages: list[dict]
    temperature: float | None = None
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    json_mode: bool = False
    schema: dict | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass
class Result:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None
    detail: str | None = None
    parsed: Any = None

    @property
    def text(self) -> str | None:
        return self.texts[0] if self.texts else None

    @property
    def ok(self) -> bool:
        return self.error is None


def extract_json(text: str) -> Any:
    """The JSON object in a completion (tolerating code fences and surrounding prose)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    candidate = fenced.group(1) if fenced else text
    start = min([i for i in (candidate.find("{"), candidate.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise ValueError("no JSON object in the reply")
    obj, _ = json.JSONDecoder(strict=False).raw_decode(candidate[start:])  # raw newlines in strings
    return obj


class _SchemaRejected(Exception):
    """The endpoint refused the form in which a JSON schema travelled (a 400/422 naming it)."""

    def __init__(self, style: str, detail: str):
        super().__init__(detail)
        self.style, self.detail = style, detail


class LLMClient:
    """Async client with a concurrency limit, retries, a circuit breaker, a response cache and
    usage counters. ``log``: the server's log file, named in endpoint failure messages."""

    def __init__(self, config: LLMConfig, base_url: str, cache_path: Path | None = None,
                 embedded: bool = False, log: str | None = None):
        self.config = config
        self.schema_style = ("llama_cpp" if embedded else "openai") if config.json_schema == "auto" \
            else config.json_schema
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else "no-key"
        if config.api_key_env and not key:
            raise ValueError(f"[llm] api_key_env names {config.api_key_env}, which is not set")
        endpoint = Endpoint(base_url, config.model, config.api_key_env,
                            key if config.api_key_env else "", log, embedded)
        self.breaker = Breaker(endpoint, config.breaker_consecutive, config.breaker_window)
        self.events: list[str] = []  # what changed during the run (a schema fallback), for the log
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=key or "no-key",
                                          timeout=config.timeout_s, max_retries=0)
        self._limit = asyncio.Semaphore(config.max_concurrency)  # use the client in one event loop
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.progress: dict[str, list[int]] = {}  # stage -> [answered, asked]
        self.usage: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: {"requests": 0, "cache_hits": 0, "failures": 0, "retries": 0,
                     "prompt_tokens": 0, "completion_tokens": 0})

    def params(self, request: Request) -> dict:
        cfg = self.config
        out = {"model": cfg.model, "messages": request.messages,
               "temperature": cfg.temperature if request.temperature is None else request.temperature,
               "top_p": cfg.top_p if request.top_p is None else request.top_p,
               "max_tokens": request.max_tokens or cfg.max_tokens, "n": request.n,
               "seed": cfg.seed if request.seed is None else request.seed}
        for name in ("stop", "presence_penalty", "frequency_penalty"):
            if getattr(request, name) is not None:
                out[name] = getattr(request, name)
        if request.json_mode:
            out["response_format"] = {"type": "json_object"}
            if request.schema and self.schema_style == "llama_cpp":
                out["response_format"]["schema"] = request.schema
            elif request.schema and self.schema_style == "openai":
                out["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "reply", "schema": request.schema}}
        return out

    @staticmethod
    def cache_key(params: Any) -> str:
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()

    async def chat(self, request: Request, stage: str = "") -> Result:
        """One request: from the cache, or from the endpoint (then cached when it succeeded).
        Raises :class:`EndpointError` when the endpoint, not this request, failed."""
        usage = self.usage[(stage, self.config.model)]
        while True:
            style, params = self.schema_style, self.params(request)
            key = self.cache_key(params)
            if self.cache is not None and (hit := self.cache.get(key)) is not None:
                usage["cache_hits"] += 1
                return _filtered(Result(**hit, cached=True))
            try:
                result = await self._call(params, usage, style)
            except _SchemaRejected as exc:
                self._fall_back(exc)
                continue
            if result.ok and self.cache is not None:
                self.cache.put(key, {"texts": result.texts, "finish_reasons": result.finish_reasons,
                                     "prompt_tokens": result.prompt_tokens,
                                     "completion_tokens": result.completion_tokens})
            return _filtered(result)

    def _fall_back(self, exc: _SchemaRejected) -> None:
        """Move to the next schema form, once per form (concurrent rejections move it once)."""
        if exc.style != self.schema_style:
            return
        self.schema_style = SCHEMA_FALLBACK[exc.style]
        self.events.append(f"the endpoint rejected JSON schemas in the {exc.style!r} form "
                           f"({exc.detail[:200]}); using {self.schema_style!r} from now on")

    async def _call(self, params: dict, usage: dict, style: str) -> Result:
        attempt, started = 0, time.monotonic()
        while True:
            wait, status = None, None
            self.breaker.check()
            async with self._limit:
                self.breaker.check()
                if "response_format" in params and style != self.schema_style:
                    raise _SchemaRejected(style, "")  # queued before a fallback: ask anew
                usage["requests"] += 1
                try:
                    # the client's own request path (auth, base URL, status errors) without its
                    # typed request/response models, which cost ~4 ms of CPU per call
                    raw = await self._client.post("/chat/completions", body=params,
                                                  cast_to=_HTTP.Response)
                    body = json.loads(raw.content)
                    choices = body["choices"]
                    texts = [(c.get("message") or {}).get("content") or "" for c in choices]
                    reasons = [c.get("finish_reason") or "stop" for c in choices]
                    if not texts:
                        raise ValueError("the response has no choices")
                    usage_body = body.get("usage") or {}
                    prompt = int(usage_body.get("prompt_tokens") or 0)
                    completion = int(usage_body.get("completion_tokens") or 0)
                    usage["prompt_tokens"] += prompt
                    usage["completion_tokens"] += completion
                    self.breaker.success()
                    return Result(texts, reasons, prompt, completion)
                except openai.APIStatusError as exc:
                    status, kind = exc.status_code, "status"
                    error, detail = f"llm_error:{status}", _message(exc)
                    if status in FATAL:
                        usage["failures"] += 1
                        raise self.breaker.failure(status, kind, detail) from None
                    self._schema_rejection(params, status, exc, detail)
                    if status in NO_RETRY or (status < 500 and status != 429):
                        usage["failures"] += 1
                        if "content_filter" in detail or "content management" in detail:
                            error = "llm_content_filter"
                        if (opened := self.breaker.record_level(status, detail)) is not None:
                            raise opened from None
                        return Result(error=error, detail=detail)
                    wait = _retry_after(exc)
                except openai.APITimeoutError as exc:
                    kind, error, detail = "timeout", "llm_timeout", str(exc)
                except openai.APIConnectionError as exc:
                    kind, error, detail = "connection", "llm_connection_error", _connection(exc)
                except (ValueError, AttributeError, TypeError, KeyError) as exc:
                    kind, error = "bad_response", "llm_bad_response"
                    detail = f"{type(exc).__name__}: {exc}"
            reconnecting = kind == "connection" and time.monotonic() - started < self.config.reconnect_s
            if attempt >= self.config.max_retries and not reconnecting:
                usage["failures"] += 1
                detail = f"after {attempt + 1} attempts: {detail}"
                prompt = self.cache_key(params["messages"])
                if (opened := self.breaker.failure(status, kind, detail, prompt)) is not None:
                    raise opened
                return Result(error=error, detail=detail)
            attempt += 1
            usage["retries"] += 1
            backoff = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempt - 1))
            if kind == "connection":  # a restarting server is back within seconds
                backoff = min(backoff, 2.0)
            await asyncio.sleep(wait if wait is not None else random.uniform(0, backoff))

    def _schema_rejection(self, params: dict, status: int, exc: openai.APIStatusError,
                          detail: str) -> None:
        """Raise :class:`_SchemaRejected` if this error refuses the schema's form: a 400 or 422
        naming ``response_format`` (llama-cpp-python's server answers a 500 for it)."""
        form = params.get("response_format") or {}
        style = "openai" if form.get("type") == "json_schema" else \
            "llama_cpp" if "schema" in form else None
        text = f"{detail} {exc.body}".lower()
        if style and status in (400, 422, 500) and ("response_format" in text
                                                    or "json_schema" in text):
            raise _SchemaRejected(style, detail)

    async def json_model(self, request: Request, model: type[BaseModel], stage: str = "") -> Result:
        """Ask for a JSON object matching ``model``; repair invalid replies a bounded number of times."""
        request = Request(**{**request.__dict__, "json_mode": True,
                             "schema": request.schema or model.model_json_schema()})
        messages = list(request.messages)
        for repair in range(self.config.repair_attempts + 1):
            result = await self.chat(Request(**{**request.__dict__, "messages": messages}), stage)
            if not result.ok:
                return result
            if result.finish_reasons and result.finish_reasons[0] == "length":
                problem = "the reply was cut off (finish_reason=length); answer shorter"
                error = "llm_truncated"
            else:
                try:
                    result.parsed = model.model_validate(extract_json(result.text or ""))
                    return result
                except (ValueError, ValidationError) as exc:
                    problem, error = f"invalid: {str(exc).splitlines()[0][:300]}", "llm_invalid_json"
            if repair == self.config.repair_attempts:
                return Result(error=error, detail=problem, texts=result.texts,
                              finish_reasons=result.finish_reasons)
            messages = messages + [
                {"role": "assistant", "content": result.text or ""},
                {"role": "user", "content": f"That reply was {problem}. Reply again with only the "
                                            f"JSON object, matching this schema: "
                                            f"{json.dumps(model.model_json_schema())}"}]
        raise AssertionError("unreachable")

    async def many(self, requests: list[Request], stage: str = "",
                   model: type[BaseModel] | None = None) -> list[Result]:
        progress = self.progress.setdefault(stage, [0, 0])
        progress[1] += len(requests)

        async def one(request: Request) -> Result:
            result = await (self.json_model(request, model, stage) if model else self.chat(request, stage))
            progress[0] += 1
            return result

        results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        for item in results:  # the breaker's error first; in-flight answers were cached
            if isinstance(item, EndpointError):
                raise item
        for item in results:
            if isinstance(item, BaseException):
                raise item
        return list(results)

    async def close(self) -> None:
        await self._client.close()
        if self.cache is not None:
            self.cache.close()

    def usage_report(self, stage: str | None = None) -> list[dict]:
        return [{"stage": s, "model": m, **counts} for (s, m), counts in self.usage.items()
                if stage is None or s == stage]


def _filtered(result: Result) -> Result:
    """A reply whose every choice was stopped by a content filter is that record's failure."""
    if result.ok and result.finish_reasons and set(result.finish_reasons) == {"content_filter"}:
        return Result(error="llm_content_filter", detail="finish_reason=content_filter",
                      texts=result.texts, finish_reasons=result.finish_reasons, cached=result.cached)
    return result


def _connection(exc: openai.APIConnectionError) -> str:
    """The connection error's root cause (``[Errno 111] Connection refused``), not only the
    client's 'Connection error.'."""
    chain, node = [], exc.__cause__ or exc.__context__
    while node is not None and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    causes = [str(c) for c in chain if str(c)]
    return f"{exc} {causes[-1]}" if causes else str(exc)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    text = inner.get("message") if isinstance(inner, dict) else None
    return f"HTTP {exc.status_code}: {text or exc.message}"[:500]

