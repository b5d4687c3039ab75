"""Self-Instruct text handling: seed tasks, parsing teacher replies, the instruction filters and
the instance filters (Wang et al. 2022, "Self-Instruct", Section 2 and its reference code;
Taori et al. 2023, Alpaca's batch format). The stage logic lives in ``stages/self_instruct.py``.
"""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from pathlib import Path

# Keywords the reference filters out: tasks a text-only model cannot do (Self-Instruct's list,
# with video/audio/flowchart/diagram from Alpaca's).
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
             "maps", "draw", "plot", "go to", "video", "audio", "flowchart", "diagram")
ALPACA_BLACKLIST = BLACKLIST + ("music",)  # Alpaca's generate_instruction.py adds "music"
# a list item's number at a line start, markdown and chat variants included: "9.", "10)", "### 9.",
# "- 9.", "**9.**", "**9**.", "Task 9:" (the number is captured)
NUMBERED = re.compile(r"(?:^|\n)[ \t]*(?:#+[ \t]*|[-*][ \t]+)?(?:\*\*|__)?(?:Task[ \t]*)?(\d+)"
                      r"(?:\*\*|__)?[ \t]?[.):](?:\*\*|__)?[ \t]*")
OUTPUT_MARK = re.compile(r"(?:\*\*|__)?Output\s*\d*\s*:(?:\*\*|__)?")
INPUT_MARK = re.compile(r"(?:\*\*|__)?Input\s*\d*\s*:(?:\*\*|__)?")
EXAMPLE_MARK = re.compile(r"(?:^|\n)[ \t]*(?:#+[ \t]*)?(?:\*\*|__)?Example\s?\d*\s*[.:]?(?:\*\*|__)?")
# what a chat model says to the reader after its answer ("I hope these help!", "Let me know ...")
SIGN_OFF = re.compile(r"\b(hope|let me know|feel free|happy to|glad to|enjoy|good luck|have fun|"
                      r"these (examples|tasks|instructions)|the (examples|tasks) above|"
                      r"if you (need|have|want|would)|any (other|more|further) (questions|tasks)|"
                      r"I('ve| have| hope| can)|you can (use|adapt|modify))\b", re.IGNORECASE)
NEXT_TASK = re.compile(r"\n\s*Task\s*:")


class SeedError(ValueError):
    """A seed task file that is missing or not in the seed_tasks.jsonl format."""


def load_seed_tasks(path: str) -> tuple[list[dict], str]:
    """Seed tasks (``builtin``: ours, in ``stages/data``), and the file's text for hashing."""
    if path == "builtin":
        text = (resources.files("stages") / "data" / "seed_tasks.jsonl").read_text("utf-8")
        where = "stages/data/seed_tasks.jsonl"
    else:
        if not Path(path).is_file():
            raise SeedError(f"seed task file {path} not found")
        text, where = Path(path).read_text("utf-8"), path
    tasks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            instances = [{"input": str(i.get("input", "")), "output": str(i["output"])}
                         for i in task.get("instances", [])]
            tasks.append({"id": str(task.get("id", f"seed_task_{number}")),
                          "instruction": re.sub(r"\s+", " ", task["instruction"]).strip(),
                          "instances": instances,
                          "is_classification": bool(task.get("is_classification", False))})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise SeedError(f"{where}:{number}: expected an object with 'instruction' and "
                            f"'instances' [{{'input', 'output'}}] ({type(exc).__name__}: {exc})") from exc
    if not tasks:
        raise SeedError(f"{where}: no seed tasks")
    return tasks, text


def split_numbered(text: str, first: int | None = None) -> list[tuple[str, bool]]:
    """The items of a numbered list, each with whether it is a chat model's lead-in.

    The prompt ends with the number ``first``, so text before any number is either that task
    (a continuation, when the list goes on at ``first + 1``) or a lead-in: when the list starts
    again at ``first`` or anywhere else (chat models restart at 1), whatever its punctuation, or
    when it ends with a colon. Each item ends at a blank line or
    where a line follows a finished sentence, so a sign-off after the last task is dropped."""
    parts = NUMBERED.split(text)
    numbers = [int(n) for n in parts[1::2]]
    lead = parts[0]
    chatter = lead.rstrip().endswith(":") or (first is not None and bool(numbers)
                                              and numbers[0] != first + 1)
    items = [(_one_item(lead), chatter)] + [(_one_item(part), False) for part in parts[2::2]]
    return [(item, flag) for item, flag in items if item]


def _one_item(text: str) -> str:
    """A list item's own lines: up to a blank line, or a line after a finished sentence."""
    kept: list[str] = []
    for line in text.strip().split("\n"):
        if not line.strip() or (kept and re.search(r"[.!?][*_\"')\]]*$", kept[-1].rstrip())):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def drop_sign_off(text: str) -> str:
    """An answer without a chat model's closing line: a last line or paragraph of one short
    sentence addressed to the reader (``SIGN_OFF``) after other content."""
    lines = text.rstrip().split("\n")
    last = lines[-1].strip()
    body = "\n".join(lines[:-1]).strip()
    one_sentence = len(last.split()) <= 30 and len(re.findall(r"[.!?](\s|$)", last)) <= 1
    if body and one_sentence and SIGN_OFF.search(last):
        return body
    return text.strip()


def clean(text: str) -> str:
    """Whitespace collapsed, markdown emphasis around the text removed, first letter
    upper-cased (the reference's ``capitalize()`` would also lower-case every later letter,
    names and acronyms included)."""
    text = re.sub(r"\s+", " ", text).strip().strip("*_").strip()
    return text[:1].upper() + text[1:]


def instruction_problem(text: str, min_words: int, max_words: int,
                        blacklist: tuple[str, ...]) -> tuple[str, str] | None:
    """The reference's filters in its order; ``(reason, detail)`` or None when it passes."""
    words = len(text.split())
    if words < min_words:
        return "too_short", f"{words} words"
    if words > max_words:
        return "too_long", f"{words} words"
    for word in blacklist:
        if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE):
            return "blacklisted_keyword", word
    if text.startswith("Write a program"):
        return "write_a_program", None
    if text[0] in string.punctuation:
        return "starts_with_punctuation", text[0]
    if not text[0].isascii():
        return "non_ascii_start", text[0]
    return None


def is_yes(text: str) -> bool:
    """The classification verdict: the reply starts with yes (anything else is no)."""
    return bool(re.match(r"\s*(classification\s*:\s*)?yes\b", text or "", re.IGNORECASE))


def _input_output(text: str) -> tuple[str, str]:
    """One example's input and output (no Output mark: it is all output)."""
    if OUTPUT_MARK.search(text):
        before, after = OUTPUT_MARK.split(text, maxsplit=1)
    else:
        before, after = "", text
    after = INPUT_MARK.split(after, maxsplit=1)[0]  # a second example run together
    before = INPUT_MARK.sub("", before.strip(), count=1) if INPUT_MARK.match(before.strip()) \
        else before.strip()
    return before.strip(), after.strip()


def _own_task(text: str) -> str:
    """The reply up to where a chat model starts a new ``Task:`` block of the few-shot layout."""
    return NEXT_TASK.split(text or "", maxsplit=1)[0].strip()


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """Examples of a generation task: ``Example N / Input: / Output:`` blocks."""
    text = drop_sign_off(_own_task(text))
    if EXAMPLE_MARK.search(text):
        blocks = EXAMPLE_MARK.split(text)
        if not OUTPUT_MARK.search(blocks[0]):  # a lead-in before the first example
            blocks = blocks[1:]
        return [_input_output(block) for block in blocks if block.strip()]
    if OUTPUT_MARK.search(text):
        return [_input_output(text[INPUT_MARK.search(text).start():]
                              if INPUT_MARK.search(text) else text)]
    return []


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """Examples of a classification task: ``Class label: X`` then the input on the next lines."""
    text = re.sub(r"(?:\*\*|__)?Class label\s*:(?:\*\*|__)?", "Class label:",
                  drop_sign_off(_own_task(text)))
    if "Class label:" not in text:
        return []
    out = []
    for block in text.split("Class label:")[1:]:
        label, _, rest = block.strip().partition("\n")
        rest = INPUT_MARK.sub("", rest.strip(), count=1) if INPUT_MARK.match(rest.strip()) \
            else rest.strip()
        out.append((rest.strip(), label.strip().strip("*_").strip()))
    return out


def parse_alpaca(text: str, first: int) -> list[tuple[str, str, str] | None]:
    """Alpaca's ``###``-separated ``N. Instruction/Input/Output`` triples; None for a block that
    does not have the three fields."""
    text = drop_sign_off(text or "")
    restart = re.search(rf"(?m)^[ \t]*(?:###[ \t]*\n[ \t]*)?{first}\.\s*Instruction:", text)
    if restart and restart.start() > 0 and not re.match(r"\s*\d+\.\s*Instruction:", text):
        text = text[restart.start():]  # a lead-in before the list starts again at ``first``
    if not re.match(r"\s*(?:###\s*)?\d+\.\s*Instruction:", text):
        text = f"{first}. Instruction:" + text
    out = []
    for block in text.split("###"):
        if not block.strip():
            continue
        fields = re.split(r"\d+\.\s*(Instruction|Input|Output):", block)
        if len(fields) != 7:
            out.append(None)
            continue
        inp = fields[4].strip()
        out.append((fields[2].strip(), "" if inp.lower() == "<noinput>" else inp, fields[6].strip()))
    return out


def format_alpaca(examples: list[tuple[str, str, str]]) -> str:
    """In-context examples in Alpaca's batch format."""
    blocks = []
    for i, (instruction, inp, output) in enumerate(examples, start=1):
        blocks.append(f"###\n{i}. Instruction: {instruction.rstrip(':')}\n"
                      f"{i}. Input:\n{inp or '<noinput>'}\n{i}. Output:\n{output}")
    return "\n".join(blocks)


def screen_instances(pairs: list[tuple[str, str]], truncated: bool,
                     limit: int) -> list[tuple[str, str, str | None]]:
    """``(input, output, reason)`` for every parsed example, in the reference's order: a cut-off
    last example, invalid ones (output empty, equal to the input, or ending with a colon),
    exact repeats; then if two kept examples share a non-empty input with different outputs,
    every example of the task is dropped; at most ``limit`` are kept."""
    out: list[tuple[str, str, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for i, (inp, output) in enumerate(pairs):
        reason = None
        if truncated and i == len(pairs) - 1:
            reason = "truncated_item"
        elif not output:
            reason = "empty_output"
        elif inp == output:
            reason = "same_input_output"
        elif inp.endswith(":") or output.endswith(":"):
            reason = "incomplete_instance"
        elif (inp, output) in seen:
            reason = "duplicate_instance"
        if reason is None:
            seen.add((inp, output))
        out.append((inp, output, reason))
    kept = [(i, o) for i, o, r in out if r is None]
    outputs: dict[str, set[str]] = {}
    for inp, output in kept:
        if inp:
            outputs.setdefault(inp, set()).add(output)
    if any(len(v) > 1 for v in outputs.values()):
        return [(i, o, r or "conflicting_instances") for i, o, r in out]
    count = 0
    for n, (inp, output, reason) in enumerate(out):
        if reason is None:
            count += 1
            if count > limit:
                out[n] = (inp, output, "over_instance_limit")
    return out
