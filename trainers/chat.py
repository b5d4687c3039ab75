"""Chat examples for SFT and DPO: rendered with the tokenizer's chat template, prompts masked.

An example's turns come from a ``messages`` column (a list of ``{role, content}``) or from
instruction columns (``system``, ``instruction``, ``input``, ``output``). Targets are -100 on
every token that is not an assistant reply (system, user, template markup), so the loss is on
responses only. Each example is its own padded row: no packing, so examples never attend to one
another. The assistant spans come from rendering growing prefixes of the conversation, which
works with any template that renders a prefix of the turns as a prefix of the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trainers.config import ChatColumns

IGNORE = -100


class ExampleError(ValueError):
    """A record that cannot become a training example (the reason is the message)."""


def turns_of(row: dict, cols: ChatColumns) -> list[dict]:
    """The conversation of one record, as a list of ``{role, content}``."""
    messages = row.get(cols.messages)
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError as exc:
            raise ExampleError("messages_not_json") from exc
    if messages:
        turns = [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in messages]
    else:
        instruction = (row.get(cols.instruction) or "").strip()
        output = (row.get(cols.output) or "").strip()
        if not instruction or not output:
            raise ExampleError("missing_instruction_or_output")
        extra = (row.get(cols.input) or "").strip()
        turns = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction},
                 {"role": "assistant", "content": output}]
    system = row.get(cols.system) or cols.default_system
    if system and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": str(system)})
    if not any(t["role"] == "assistant" and t["content"] for t in turns):
        raise ExampleError("no_assistant_turn")
    return turns


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer, turns: list[dict], seq_len: int) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its targets (next tokens, -100 off the replies)."""
    ids: list[int] = []
    labels: list[int] = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(turns[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(turns[:i + 1], tokenize=False)
        if not full.startswith(head):
            raise ExampleError("template_not_prefix_stable")
        head_ids = _ids(tokenizer, head)
        if head_ids[:len(ids)] != ids:
            raise ExampleError("template_not_prefix_stable")
        reply_ids = _ids(tokenizer, full[len(head):])
        labels += [IGNORE] * (len(head_ids) - len(ids)) + reply_ids
        ids = head_ids + reply_ids
    ids, labels = ids[:seq_len + 1], labels[:seq_len + 1]
    targets = labels[1:]
    if all(t == IGNORE for t in targets):
        raise ExampleError("response_truncated_away")
    return ids[:-1], targets


@dataclass
class ChatExamples:
    """Tokenized SFT examples (inputs and targets), batched by example ids."""

    inputs: list[list[int]]
    targets: list[list[int]]
    pad_id: int
    rejected: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, rows: list[dict], tokenizer, cols: ChatColumns, seq_len: int):
        inputs, targets, rejected = [], [], {}
        for row in rows:
            try:
                ids, tgt = encode_chat(tokenizer, turns_of(row, cols), seq_len)
            except ExampleError as exc:
                rejected[str(exc)] = rejected.get(str(exc), 0) + 1
                continue
            inputs.append(ids)
            targets.append(tgt)
        return cls(inputs, targets, tokenizer.pad_token_id, rejected)

    def __len__(self) -> int:
        return len(self.inputs)

    def batch_of(self, ids: list[int]) -> dict:
        return pad_rows([self.inputs[i] for i in ids], [self.targets[i] for i in ids], self.pad_id)


def pad_rows(inputs: list[list[int]], targets: list[list[int]], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``targets`` (-100 on padding)."""
    import torch

    width = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(inputs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, (x, t) in enumerate(zip(inputs, targets)):
        ids[row, :len(x)] = torch.tensor(x)
        tgt[row, :len(t)] = torch.tensor(t)
        mask[row, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "targets": tgt}


@dataclass
class PreferencePairs:
    """DPO pairs: chosen and rejected replies to one prompt, each encoded like an SFT example."""

    chosen: ChatExamples
    worse: ChatExamples
    rejected: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, rows: list[dict], tokenizer, cols: ChatColumns, prompt: str, chosen: str,
              rejected: str, seq_len: int):
        good: tuple[list, list] = ([], [])
        bad: tuple[list, list] = ([], [])
        skipped: dict[str, int] = {}
        for row in rows:
            base = {cols.system: row.get(cols.system), cols.instruction: row.get(prompt)}
            try:
                if not row.get(chosen) or not row.get(rejected):
                    raise ExampleError("missing_chosen_or_rejected")
                pair = [encode_chat(tokenizer, turns_of({**base, cols.output: row[side]}, cols), seq_len)
                        for side in (chosen, rejected)]
            except ExampleError as exc:
                skipped[str(exc)] = skipped.get(str(exc), 0) + 1
                continue
            for (ids, tgt), into in zip(pair, (good, bad)):
                into[0].append(ids)
                into[1].append(tgt)
        pad = tokenizer.pad_token_id
        return cls(ChatExamples(*good, pad), ChatExamples(*bad, pad), skipped)

    def __len__(self) -> int:
        return len(self.chosen)

    def batch_of(self, ids: list[int]) -> dict:
        """Chosen rows then rejected rows of the same pairs, plus the pair indices."""
        import torch

        out = pad_rows([self.chosen.inputs[i] for i in ids] + [self.worse.inputs[i] for i in ids],
                       [self.chosen.targets[i] for i in ids] + [self.worse.targets[i] for i in ids],
                       self.chosen.pad_id)
        out["pair_ids"] = torch.tensor(ids, dtype=torch.long)
        return out
