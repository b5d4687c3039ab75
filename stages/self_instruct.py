"""Self-Instruct bootstrapping (Wang et al. 2022), with Alpaca's batch prompt as an option.

``mode = "self_instruct"``, the paper's loop:

1. rounds: ``requests_per_round`` prompts, each showing ``prompt_tasks`` (8) in-context tasks,
   ``machine_tasks`` (2) of them machine-generated once the pool has some, the rest from the
   human seed tasks, asking for more (``prompts/self_instruct_tasks.txt``), sampled as the
   reference did (temperature 0.7, top_p 0.5, presence_penalty 2, stop at the 16th task). The
   reply's numbered list is split into candidates; a reply cut by ``finish_reason == "length"``
   loses its last. Chat teachers' habits are parsed away: a lead-in before the list (whatever
   its punctuation: the list restarts instead of continuing), a sign-off after it, markdown
   numbering (``**9.**``, ``Task 9:``, ``9)``) and emphasis; the same for the examples' lead-ins,
   ``**Example 1:**``/``**Input:**`` marks and closing lines (``_instruct.drop_sign_off``).
2. filters, in the reference code's order: word count (it drops <= 3 and > 150 words), a keyword
   blacklist, "Write a program", leading punctuation, a non-ASCII first character, then ROUGE-L
   F > 0.7 against any task in the pool (seeds, machine tasks, earlier candidates of the round).
   Kept tasks join the pool. Rounds stop once ``target_count`` machine tasks are kept (or after
   ``max_rounds``).
3. classification detection (``self_instruct_is_clf``, greedy, 3 tokens; a reply starting with
   "yes" means classification), then instance generation: output-first (class label, then an
   input) for classification tasks, input-first for the rest; examples are filtered as in the
   reference (``_instruct.screen_instances``): a task whose identical inputs got different
   outputs loses all of them.

``mode = "alpaca"``: each prompt shows ``prompt_tasks`` seed examples in Alpaca's ``###`` format
and the teacher writes instruction, input and output together; the same filters apply. Its
defaults are Alpaca's ``generate_instruction.py`` (keys you set win): 3 in-context examples from
the seed tasks only (``machine_tasks = 0``), a prompt for ``alpaca_count`` = 20 tasks stopped at
"20." (``stop``), temperature 1.0, top_p 1.0, a 3,072-token budget, its blacklist (with "music").

Resuming: prompts, their in-context samples and the request seeds are fixed by ``seed``, the
round and the request number, so a rerun (a larger ``target_count``, or after a crash) replays
earlier rounds from the LLM cache without a request and goes on from there.

The stage does not read its input (put it after any stage); seeds come from ``seed_tasks``
(``builtin``: ~100 tasks written for this project, ``stages/data/seed_tasks.jsonl``, or the path
of a JSONL file in the paper's ``seed_tasks.jsonl`` format). Output: one row per instance:
``instruction``, ``input``, ``output`` (the SFT columns), ``is_classification``, ``task_id``,
``origin``, ``round``, ``max_rouge``, ``most_similar``, ``avg_rouge``, provenance.

Drop reasons: ``too_short``, ``too_long``, ``blacklisted_keyword``, ``write_a_program``,
``starts_with_punctuation``, ``non_ascii_start``, ``rouge_too_similar``, ``truncated_item``,
``lead_in``, ``unparseable_reply``, ``no_instances``, ``empty_output``, ``same_input_output``,
``incomplete_instance``, ``duplicate_instance``, ``conflicting_instances``,
``over_instance_limit``, and the LLM layer's (``llm_error:<status>``, ``llm_timeout`` ...).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.llm import Request
from pipeline.stage import GlobalContext, Records
from stages import _instruct as si
from stages import _synth
from stages._rouge import RougePool

VERSION = "1"
USES_LLM = True

SCHEMA = pa.schema([
    ("id", pa.string()), ("task_id", pa.string()), ("instruction", pa.string()),
    ("input", pa.string()), ("output", pa.string()), ("is_classification", pa.bool_()),
    ("origin", pa.string()), ("round", pa.int64()), ("max_rouge", pa.float64()),
    ("most_similar", pa.string()), ("avg_rouge", pa.float64()), ("model", pa.string()),
    ("prompt", pa.string()), ("prompt_hash", pa.string()), ("temperature", pa.float64()),
    ("seed", pa.int64()),
])


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["self_instruct", "alpaca"] = "self_instruct"
    seed_tasks: str = "builtin"
    target_count: int = Field(default=100, ge=1)  # machine tasks kept before the rounds stop
    max_rounds: int = Field(default=50, ge=1)
    requests_per_round: int = Field(default=5, ge=1)  # the reference's request_batch_size
    prompt_tasks: int = Field(default=8, ge=1)  # 8 in Self-Instruct, 3 in Alpaca
    machine_tasks: int = Field(default=2, ge=0)  # of those, machine-made once available
    rouge_threshold: float = Field(default=0.7, gt=0.0, le=1.0)  # drop when F > threshold
    min_words: int = Field(default=4, ge=1)
    max_words: int = Field(default=150, ge=1)
    blacklist: list[str] = Field(default_factory=lambda: list(si.BLACKLIST))
    instances_per_task: int = Field(default=5, ge=1)  # the reference keeps at most 5
    include_seeds: bool = False  # also output the seed tasks' own instances (origin "seed")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)  # the reference's, for new tasks
    max_tokens: int = Field(default=512, ge=16)
    instance_max_tokens: int = Field(default=300, ge=16)  # the reference's
    seed: int = 0
    tasks_prompt: str = "self_instruct_tasks"
    classify_prompt: str = "self_instruct_is_clf"
    input_first_prompt: str = "self_instruct_input_first"
    output_first_prompt: str = "self_instruct_output_first"
    alpaca_prompt: str = "alpaca_tasks"
    alpaca_count: int = Field(default=20, ge=2)  # tasks an Alpaca prompt asks for (examples included)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)  # None: [llm] top_p
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: list[str] | None = None  # stop sequences of the task requests

    @model_validator(mode="before")
    @classmethod
    def _reference_defaults(cls, data: Any) -> Any:
        """The reference's sampling as defaults (keys you set win): Self-Instruct's
        ``bootstrap_instructions.py`` (top_p 0.5, presence_penalty 2, stop at the 16th task)
        or Alpaca's ``generate_instruction.py`` (``mode = "alpaca"``). One difference: the
        reference also stopped at a blank line ("\\n\\n", a GPT-3 list's end); a chat model
        puts one after its lead-in ("Sure! Here are ...\\n\\n9. ..."), where it would stop the
        reply before its first task. SmolLM2-135M writes no blank line in its lists: with and
        without it, the same 8 kept instances and 14 tasks (measured, main job's settings)."""
        if not isinstance(data, dict):
            return data
        if data.get("mode") == "alpaca":
            count = data.get("alpaca_count", 20)
            return {"prompt_tasks": 3, "machine_tasks": 0, "temperature": 1.0, "top_p": 1.0,
                    "max_tokens": 3072, "blacklist": list(si.ALPACA_BLACKLIST),
                    "stop": [f"\n{count}", f"{count}.", f"{count} ."], **data}
        shown = data.get("prompt_tasks", cls.model_fields["prompt_tasks"].default)
        last = 2 * shown  # as many new tasks as shown ones
        return {"top_p": 0.5, "presence_penalty": 2.0, "frequency_penalty": 0.0,
                "stop": [f"\n{last}", f"{last}.", f"{last} ."], **data}

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.machine_tasks > self.prompt_tasks:
            raise ValueError(f"machine_tasks ({self.machine_tasks}) exceeds prompt_tasks "
                             f"({self.prompt_tasks})")
        if self.min_words > self.max_words:
            raise ValueError("min_words exceeds max_words")
        return self


def template_names(config: Config) -> list[str]:
    if config.mode == "alpaca":
        return [config.alpaca_prompt]
    return [config.tasks_prompt, config.classify_prompt, config.input_first_prompt,
            config.output_first_prompt]


def hash_extra(config: Config) -> list[str]:
    """Templates and the seed file: editing either recomputes the stage."""
    _, text = si.load_seed_tasks(config.seed_tasks)
    return [t.hash for t in _synth.load_prompts(*template_names(config))] + \
        [hashlib.sha256(text.encode()).hexdigest()[:12]]


class Bootstrap:
    """The rounds' state: the ROUGE pool, the machine tasks and every row so far."""

    def __init__(self, ctx: GlobalContext, config: Config):
        self.ctx, self.config = ctx, config
        self.seeds, _ = si.load_seed_tasks(config.seed_tasks)
        self.pool = RougePool([t["instruction"] for t in self.seeds])
        self.machine: list[dict] = []
        self.rows: list[dict] = []
        self.model = getattr(ctx.llm, "model_name", "")
        self.template = _synth.load_prompts(template_names(config)[0])[0]
        self.stats = {"rounds": 0, "requests": 0, "candidates": 0}

    def prompt(self, round_no: int, index: int) -> str:
        cfg = self.config
        pick = _synth.rng(cfg.seed, round_no, index)
        machine = pick.sample(self.machine, min(cfg.machine_tasks, len(self.machine)))
        human = pick.sample(self.seeds, min(len(self.seeds), cfg.prompt_tasks - len(machine)))
        shown = machine + human
        pick.shuffle(shown)
        if cfg.mode == "alpaca":
            examples = [(t["instruction"], *_first_instance(t)) for t in shown]
            return self.template.render(examples=si.format_alpaca(examples), next=len(shown) + 1,
                                        count=cfg.alpaca_count)
        listed = "\n".join(f"{i}. {t['instruction'].rstrip(':')}" for i, t in enumerate(shown, 1))
        return self.template.render(tasks=listed, next=len(shown) + 1)

    def base_row(self, task_id: str, round_no: int, seed: int, **values) -> dict:
        return {"id": task_id, "task_id": task_id, "origin": "machine", "round": round_no,
                "model": self.model, "temperature": self.config.temperature, "seed": seed,
                **_synth.provenance([self.template]), **values}

    def round(self, round_no: int) -> None:
        cfg = self.config
        seeds = [_synth.derive_seed(cfg.seed, round_no, i) for i in range(cfg.requests_per_round)]
        requests = [Request([{"role": "user", "content": self.prompt(round_no, i)}],
                            temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seeds[i],
                            top_p=cfg.top_p, stop=cfg.stop, presence_penalty=cfg.presence_penalty,
                            frequency_penalty=cfg.frequency_penalty)
                    for i in range(cfg.requests_per_round)]
        results = self.ctx.llm.chat(requests)
        candidates: list[dict] = []
        for i, result in enumerate(results):
            base = f"r{round_no:03d}-q{i:02d}"
            if not result.ok:
                self.rows.append(self.base_row(base, round_no, seeds[i], drop_reason=result.error,
                                               drop_detail=result.detail))
                continue
            items = self.candidates(result.text or "", round_no)
            if not items:
                self.rows.append(self.base_row(base, round_no, seeds[i],
                                               drop_reason="unparseable_reply",
                                               drop_detail=(result.text or "")[:500]))
            cut = result.finish_reasons[:1] == ["length"]
            for j, item in enumerate(items):
                row = self.base_row(f"{base}-t{j:02d}", round_no, seeds[i], **item)
                if cut and j == len(items) - 1:
                    row.update(drop_reason="truncated_item")
                if row.get("drop_reason") is None:
                    candidates.append(row)
                self.rows.append(row)
        verdicts = self.pool.screen([c["instruction"] for c in candidates], cfg.rouge_threshold)
        for row, verdict in zip(candidates, verdicts):
            similar = self.pool.texts[verdict.most_similar] if verdict.most_similar >= 0 else None
            row.update(max_rouge=verdict.max_score, avg_rouge=verdict.mean_score,
                       most_similar=similar)
            if not verdict.keep:
                row.update(drop_reason="rouge_too_similar",
                           drop_detail=f"F={verdict.max_score:.3f} with: {similar}")
            else:
                self.machine.append({"instruction": row["instruction"], "row": row,
                                     "instances": [{"input": row.get("input") or "",
                                                    "output": row.get("output") or ""}]})
        self.stats["rounds"] += 1
        self.stats["requests"] += len(requests)
        self.stats["candidates"] += len(candidates)

    def candidates(self, text: str, round_no: int) -> list[dict]:
        """Candidate rows of one reply, the local filters' reasons already set."""
        cfg = self.config
        out = []
        if cfg.mode == "alpaca":
            parsed = si.parse_alpaca(text, cfg.prompt_tasks + 1)
            items = [(p, False) if p else (None, False) for p in parsed]
        else:
            items = [((si.clean(part), "", ""), lead)
                     for part, lead in si.split_numbered(text, cfg.prompt_tasks + 1)]
        for triple, lead in items:
            if triple is None:
                out.append({"drop_reason": "unparseable_reply", "drop_detail": text[:500]})
                continue
            instruction, inp, output = si.clean(triple[0]), triple[1], triple[2]
            row = {"instruction": instruction, "input": inp or None, "output": output or None}
            problem = si.instruction_problem(instruction, cfg.min_words, cfg.max_words,
                                             tuple(cfg.blacklist)) if instruction else ("too_short", "0 words")
            if lead:  # a chat model's lead-in, not a task
                problem = ("lead_in", None)
            if problem:
                row.update(drop_reason=problem[0], drop_detail=problem[1])
            out.append(row)
        return out


def _first_instance(task: dict) -> tuple[str, str]:
    first = task["instances"][0] if task["instances"] else {"input": "", "output": ""}
    return first["input"], first["output"]


def instances(state: Bootstrap) -> None:
    """Classification detection, then instance generation for every kept machine task."""
    cfg, llm = state.config, state.ctx.llm
    clf_t, in_t, out_t = _synth.load_prompts(cfg.classify_prompt, cfg.input_first_prompt,
                                             cfg.output_first_prompt)
    tasks = state.machine
    verdicts = llm.chat([Request([{"role": "user", "content": clf_t.render(task=t["instruction"])}],
                                 temperature=0.0, max_tokens=3) for t in tasks]) if tasks else []
    asks, waiting = [], []
    for task, verdict in zip(tasks, verdicts):
        row = task["row"]
        if not verdict.ok:
            row.update(drop_reason=verdict.error, drop_detail=verdict.detail)
            continue
        row["is_classification"] = si.is_yes(verdict.text or "")
        template = out_t if row["is_classification"] else in_t
        row.update(_synth.provenance([state.template, clf_t, template]))
        asks.append(Request([{"role": "user", "content": template.render(task=task["instruction"])}],
                            temperature=0.0, max_tokens=cfg.instance_max_tokens))
        waiting.append(task)
    for task, result in zip(waiting, llm.chat(asks) if asks else []):
        row = task["row"]
        if not result.ok:
            row.update(drop_reason=result.error, drop_detail=result.detail)
            continue
        parse = si.parse_output_first if row["is_classification"] else si.parse_input_first
        pairs = parse(result.text or "")
        if not pairs:
            row.update(drop_reason="no_instances", drop_detail=(result.text or "")[:500])
            continue
        expand(state, row, pairs, result.finish_reasons[:1] == ["length"])


def expand(state: Bootstrap, row: dict, pairs: list[tuple[str, str]], truncated: bool) -> None:
    """Replace a task's row by one row per instance, each kept or dropped with its reason."""
    screened = si.screen_instances(pairs, truncated, state.config.instances_per_task)
    row["_instances"] = [{**row, "id": f"{row['task_id']}-e{k}", "input": inp, "output": out,
                          "drop_reason": reason, "drop_detail": None}
                         for k, (inp, out, reason) in enumerate(screened)]


def seed_rows(state: Bootstrap) -> list[dict]:
    return [{"id": f"{t['id']}-e{k}", "task_id": t["id"], "instruction": t["instruction"],
             "input": i["input"], "output": i["output"], "is_classification": t["is_classification"],
             "origin": "seed", "round": 0} for t in state.seeds for k, i in enumerate(t["instances"])]


def run(ctx: GlobalContext, config: Config) -> Records:
    state = Bootstrap(ctx, config)
    for round_no in range(1, config.max_rounds + 1):
        if len(state.machine) >= config.target_count:
            break
        state.round(round_no)
    if config.mode == "alpaca":
        for task in state.machine:
            expand(state, task["row"], [(task["row"]["input"] or "", task["row"]["output"] or "")],
                   False)
    else:
        instances(state)
    rows = [out for row in state.rows for out in row.pop("_instances", [row])]
    rows += seed_rows(state) if config.include_seeds else []
    kept = [r for r in rows if r.get("drop_reason") is None]
    info = {**state.stats, "prompts": {t.name: t.hash for t in
                                       _synth.load_prompts(*template_names(config))},
            "mode": config.mode, "seed_tasks": len(state.seeds), "machine_tasks": len(state.machine),
            "tasks_with_instances": len({r["task_id"] for r in kept if r["origin"] == "machine"}),
            "classification_tasks": len({r["task_id"] for r in kept if r.get("is_classification")
                                         and r["origin"] == "machine"}),
            "seed_hash": hash_extra(config)[-1]}
    return Records(table=_synth.table(rows, SCHEMA), info=info)


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    summary = [f"Mode `{info.get('mode')}`: {info.get('rounds', 0)} rounds, "
               f"{info.get('requests', 0):,} bootstrap requests, {info.get('candidates', 0):,} "
               f"candidates screened against {info.get('seed_tasks', 0)} seed tasks "
               f"(file hash {info.get('seed_hash')}); {info.get('machine_tasks', 0):,} new tasks "
               f"passed the filters, {info.get('tasks_with_instances', 0):,} kept with instances "
               f"({info.get('classification_tasks', 0):,} classification)."]
    return _synth.card("Self-Instruct", record, summary)
