"""Verified Python exercises in the spirit of phi-1's CodeExercises (Gunasekar et al. 2023).

phi-1 fine-tuned on ~180M tokens of exercises: a function signature with a docstring stating
the task, and its solution, made diverse by constraining topics and audience. Here the teacher
writes one exercise per request about a subject (a topic from ``topics``, or an excerpt of a
seed document from the input) for a ``levels`` audience, with assertions that test it, and an
exercise is kept only if the code parses, defines a documented function, has at least
``min_asserts`` assertions calling it, and runs with every assertion passing in the sandbox
(``pipeline/sandbox.py``: own process, time, memory, process and file limits, behind kernel
walls: user, network, mount and PID namespaces; the home folders, the run folder and the paths in
``sandbox_hide`` are hidden). Where the kernel refuses namespaces the stage refuses to run,
before any request, unless ``sandbox = "guards"`` (Python-level guards only) accepts the risk.

Output: ``exercise`` (signature + docstring: what a student model sees), ``completion`` (the
body after the docstring), ``text`` (the whole solution: imports, helpers and the function),
``tests`` (the assertions), ``entry_point``, ``level``, ``topic``/``seed_doc``, ``content_hash``,
``n_chars``, ``run_s`` (sandbox time), provenance.

Drop reasons: ``no_code``, ``syntax_error``, ``no_function``, ``no_docstring``,
``too_few_assertions``, the sandbox's (``assertion_failed``, ``timeout``, ``memory``,
``network_blocked``, ``process_blocked``, ``filesystem_blocked``, ``exception:<Type>`` ...),
``llm_truncated``, ``empty_completion`` and the LLM layer's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from pipeline import prompts, sandbox
from pipeline.stage import GlobalContext, Records
from stages import _synth

VERSION = "1"
USES_LLM = True

TOPICS = ["string manipulation", "list comprehensions", "dictionaries and counting",
          "recursion", "sorting with custom keys", "binary search", "two pointers",
          "sliding windows", "stacks and queues", "sets", "prime numbers", "greatest common divisors",
          "date arithmetic without libraries", "parsing simple text formats", "matrices as lists",
          "dynamic programming", "generators", "interval merging", "run-length encoding",
          "validating input", "bit manipulation", "graph traversal", "geometry with points",
          "statistics of a list"]
CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)
SOLUTION_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                  ast.Assign, ast.AnnAssign)
SCHEMA = pa.schema([
    ("id", pa.string()), ("exercise", pa.string()), ("completion", pa.string()),
    ("text", pa.string()), ("tests", pa.string()), ("entry_point", pa.string()),
    ("level", pa.string()), ("topic", pa.string()), ("seed_doc", pa.string()),
    ("content_hash", pa.string()), ("n_chars", pa.int64()), ("run_s", pa.float64()),
    ("model", pa.string()), ("prompt", pa.string()), ("prompt_hash", pa.string()),
    ("temperature", pa.float64()), ("seed", pa.int64()),
])


class Config(_synth.GenerationConfig):
    from_input: bool = False
    topics: list[str] = Field(default_factory=lambda: list(TOPICS))
    levels: list[str] = Field(default_factory=lambda: ["beginner", "intermediate", "advanced"])
    min_asserts: int = Field(default=2, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=16)
    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=512, ge=64)
    chunk: int = Field(default=16, ge=1)  # programs per sandbox task
    sandbox: Literal["namespaces", "guards"] = "namespaces"  # guards: no kernel walls (risky)
    sandbox_hide: list[str] = Field(default_factory=list)  # secrets the programs must not see
    prompt: str = "exercise"


def hash_extra(config: Config) -> list[str]:
    return [t.hash for t in _synth.load_prompts(config.prompt, *_synth.SUBJECT_PROMPTS)]


def parse(reply: str, min_asserts: int) -> tuple[dict | None, str | None, str | None]:
    """Split a reply into solution, tests and the exercise; ``(parts, reason, detail)``."""
    blocks = CODE_BLOCK.findall(reply)
    code = next((b for b in blocks if "def " in b), blocks[0] if blocks else reply)
    if "def " not in code:
        return None, "no_code", reply[:300]
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return None, "syntax_error", f"{exc.msg} (line {exc.lineno})"
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
    if func is None:
        return None, "no_function", None
    if ast.get_docstring(func) is None:
        return None, "no_docstring", func.name
    asserts = [n for n in tree.body if isinstance(n, ast.Assert)
               and any(isinstance(c, ast.Call) and getattr(c.func, "id", None) == func.name
                       for c in ast.walk(n))]
    if len(asserts) < min_asserts:
        return None, "too_few_assertions", f"{len(asserts)} assertions call {func.name}"
    lines = code.splitlines()
    solution = "\n\n".join(ast.get_source_segment(code, n, padded=True) or ""
                           for n in tree.body if isinstance(n, SOLUTION_NODES)).strip()
    head_end = func.body[0].end_lineno  # the docstring's last line
    start = min([func.lineno] + [d.lineno for d in func.decorator_list])
    return {"entry_point": func.name, "text": solution,
            "tests": "\n".join(ast.get_source_segment(code, n) for n in asserts),
            "exercise": "\n".join(lines[start - 1:head_end]),
            "completion": "\n".join(lines[head_end:func.end_lineno])}, None, None


def verify(programs: list[str], timeout_s: float, memory_mb: int, mode: str = "namespaces",
           hide: tuple = ()) -> list[tuple]:
    """Sandbox results of a chunk of programs: ``(reason, detail, seconds)``."""
    results = sandbox.run_many(programs, workers=2, timeout_s=timeout_s, memory_mb=memory_mb,
                               mode=mode, hide=hide)
    return [(r.reason, r.detail if not r.ok else None, round(r.duration_s, 3)) for r in results]


def run(ctx: GlobalContext, config: Config) -> Records:
    walls = sandbox.require(config.sandbox)  # refused before any request to the teacher
    run_folder = ctx.artifact_dir.parents[1]  # runs/NAME/artifacts/NN-stage
    template = prompts.load(config.prompt)
    items = _synth.plan(ctx, config, config.levels)
    answers = _synth.generate(ctx, config, template, items, level=lambda it: it["axis0"],
                              min_asserts=lambda it: config.min_asserts)
    model = getattr(ctx.llm, "model_name", "")
    rows, runnable = [], []
    for item, (text, reason, detail) in zip(items, answers):
        row = {"id": f"exercise-{item['index']:05d}", "level": item["axis0"],
               **_synth.item_row(item, template, config, model)}
        if text is not None:
            parts, reason, detail = parse(text, config.min_asserts)
            if parts:
                row.update(parts, content_hash=_synth.content_hash(parts["text"]),
                           n_chars=len(parts["text"]))
                runnable.append(row)
        row.update(drop_reason=reason, drop_detail=detail)
        rows.append(row)
    chunks = [runnable[i:i + config.chunk] for i in range(0, len(runnable), config.chunk)]
    outcomes = ctx.run_tasks(verify, [[f"{r['text']}\n\n\n{r['tests']}\n" for r in chunk]
                                      for chunk in chunks],
                             timeout_s=config.timeout_s, memory_mb=config.memory_mb,
                             mode=config.sandbox, hide=(str(run_folder), *config.sandbox_hide)
                             ) if chunks else []
    for row, (reason, detail, seconds) in zip(runnable, [o for out in outcomes for o in out]):
        row.update(drop_reason=reason, drop_detail=detail, run_s=seconds)
    info = {"prompts": {t.name: t.hash for t in
                        _synth.load_prompts(config.prompt, *_synth.SUBJECT_PROMPTS)},
            "requested": len(items), "executed": len(runnable),
            "sandbox": walls}
    return Records(table=_synth.table(rows, SCHEMA), info=info)


def card_section(record: dict, plot_dir: Path) -> str:
    info, cfg = record.get("info", {}), record.get("config", {})
    summary = [f"{info.get('requested', 0):,} exercises requested, {info.get('executed', 0):,} "
               f"parsed and run in the sandbox (timeout {cfg.get('timeout_s')} s, "
               f"{cfg.get('memory_mb')} MB, no child processes; {_walls(info)}); "
               f"{record.get('rows_kept', 0):,} passed all their assertions."]
    return _synth.card("Verified exercises", record, summary)


def _walls(info: dict) -> str:
    """How the sandbox held the programs (older ledgers: the network isolation alone)."""
    if "sandbox" in info:
        return f"sandbox {info['sandbox'].get('mode')}: {sandbox.describe(info['sandbox'])}"
    return f"network isolation: {info.get('network_isolation')}"
