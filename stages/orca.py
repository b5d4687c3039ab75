"""Explanation tuning (Orca, Mukherjee et al. 2023; Orca 2, Mitra et al. 2023).

Every input instruction (``instruction_column``, plus ``input_column`` when present and not
empty) is answered by the teacher under one system message drawn, with the configured weights,
from ``prompts/orca_system_messages.txt``: 16 messages we wrote, from none at all to "work step
by step and justify each step" to "talk to a five-year-old". Orca 1 used 16 hand-written system
messages the same way, to make the teacher show its reasoning strategy in the answer.

Prompt erasure (Orca 2): the answer was made under the detailed ``teacher_system`` message, but
the row's ``system`` column, the one a trainer uses, holds ``generic_system`` instead, so the
student learns to pick the strategy without being told it. ``erase = false`` keeps the teacher's
message in ``system``.

Output: the input row plus ``output`` (the teacher's answer; an existing ``output`` moves to
``reference_output``), ``system``, ``teacher_system``, ``teacher_system_id``, ``model``,
``prompt`` (the system message file) and ``prompt_hash``, ``temperature``, ``seed``.

Drop reasons: ``llm_truncated`` (with ``truncated = "reject"``; ``"trim"`` cuts the answer to its
last whole sentence), ``empty_completion``, and the LLM layer's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import prompts
from pipeline.llm import Request
from pipeline.stage import with_reasons
from stages import _synth

VERSION = "1"
USES_LLM = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction_column: str = "instruction"
    input_column: str = "input"
    system_messages: str = "orca_system_messages"  # a template name, or a .txt file of ours
    weights: dict[str, float] = Field(default_factory=dict)  # by name; unnamed ones weigh 1
    erase: bool = True  # Orca 2's prompt erasure
    generic_system: str = "You are a helpful assistant."
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=16)
    truncated: Literal["reject", "trim"] = "reject"
    seed: int = 0

    @model_validator(mode="after")
    def _known_names(self) -> Config:
        names = set(load_systems(self.system_messages)[0])
        unknown = sorted(set(self.weights) - names)
        if unknown:
            raise ValueError(f"weights name unknown system messages {unknown}; "
                             f"the messages are {sorted(names)}")
        if not any(self.weights.get(n, 1.0) > 0 for n in names):
            raise ValueError("every system message has weight 0")
        return self


def load_systems(name: str) -> tuple[dict[str, str], prompts.Prompt]:
    """The ``[name]`` blocks of a system message file, in order."""
    template = prompts.load(name)
    systems: dict[str, list[str]] = {}
    current = None
    for line in template.text.splitlines():
        header = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]\s*", line)
        if header:
            current = header.group(1)
            systems[current] = []
        elif current is not None:
            systems[current].append(line)
    if not systems:
        raise prompts.PromptError(f"{name}: no [name] blocks of system messages")
    return {k: "\n".join(v).strip() for k, v in systems.items()}, template


def hash_extra(config: Config) -> str:
    return load_systems(config.system_messages)[1].hash


def process(batch: pa.Table, config: Config, llm) -> pa.Table:
    systems, template = load_systems(config.system_messages)
    names = list(systems)
    weights = [config.weights.get(n, 1.0) for n in names]
    instructions = _synth.text_column(batch, config.instruction_column, "orca")
    inputs = _synth.text_column(batch, config.input_column, "orca") \
        if config.input_column in batch.column_names else [""] * batch.num_rows
    ids = batch.column("id").to_pylist()
    chosen = [_synth.weighted_pick((config.seed, "system", i), names, weights) for i in ids]
    seeds = [_synth.derive_seed(config.seed, "answer", i) for i in ids]
    requests = []
    for name, instruction, inp, seed in zip(chosen, instructions, inputs, seeds):
        user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
        system = [{"role": "system", "content": systems[name]}] if systems[name] else []
        requests.append(Request(system + [{"role": "user", "content": user}],
                                temperature=config.temperature, max_tokens=config.max_tokens,
                                seed=seed))
    results = llm.chat(requests) if requests else []
    answers = [_synth.completion(r, config.truncated) for r in results]
    teacher = [systems[n] for n in chosen]
    columns = {}
    if "output" in batch.column_names:
        columns["reference_output"] = batch.column("output")
    n = batch.num_rows
    columns.update({
        "output": pa.array([a[0] for a in answers], pa.string()),
        "system": pa.array([config.generic_system] * n if config.erase else teacher, pa.string()),
        "teacher_system": pa.array(teacher, pa.string()),
        "teacher_system_id": pa.array(chosen, pa.string()),
        "model": pa.array([getattr(llm, "model_name", "")] * n, pa.string()),
        "prompt": pa.array([template.name] * n, pa.string()),
        "prompt_hash": pa.array([template.hash] * n, pa.string()),
        "temperature": pa.array([config.temperature] * n, pa.float64()),
        "seed": pa.array(seeds, pa.int64()),
    })
    out = _synth.set_columns(batch, columns)
    return with_reasons(out, [a[1] for a in answers], [a[2] for a in answers])


def card_section(record: dict, plot_dir: Path) -> str | None:
    cfg = record.get("config", {})
    systems, template = load_systems(cfg.get("system_messages", "orca_system_messages"))
    weights = cfg.get("weights", {})
    total = sum(weights.get(n, 1.0) for n in systems)
    lines = [f"Answers written under {len(systems)} system messages (`{template.name}`, "
             f"{template.hash}); prompt erasure "
             + (f"on: the `system` column holds \"{cfg.get('generic_system')}\"." if cfg.get("erase")
                else "off: `system` is the teacher's message."),
             "", "| system message | weight | share |", "|---|---:|---:|"]
    lines += [f"| `{n}` | {weights.get(n, 1.0):g} | {weights.get(n, 1.0) / total:.1%} |"
              for n in systems]
    return _synth.card("Orca explanation tuning", record, lines, [template])
