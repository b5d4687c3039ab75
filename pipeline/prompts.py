"""Prompt templates: plain-text files in ``prompts/`` with ``$named`` fields.

Each template is identified by its name and a hash of its text; stages record both in every
record and in the dataset card, so a dataset says exactly how it was made. A user can point a
stage at a template file of their own instead of a name.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class PromptError(ValueError):
    """A missing template or a field the template needs but did not get."""


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def fields(self) -> set[str]:
        return {m.group("named") or m.group("braced")
                for m in string.Template.pattern.finditer(self.text)
                if m.group("named") or m.group("braced")}

    def render(self, **values: object) -> str:
        try:
            return string.Template(self.text).substitute(**{k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise PromptError(f"prompt {self.name!r} needs the field {exc.args[0]!r}; "
                              f"it has {sorted(self.fields)}") from exc


def load(name_or_path: str) -> Prompt:
    """A template shipped in ``prompts/`` by name (``edu_score``), or a file path."""
    path = Path(name_or_path)
    if path.suffix == ".txt" and path.is_file():
        return Prompt(path.stem, path.read_text(encoding="utf-8"))
    ref = resources.files("prompts") / f"{name_or_path}.txt"
    if not ref.is_file():
        shipped = sorted(p.name[:-4] for p in resources.files("prompts").iterdir()
                         if p.name.endswith(".txt"))
        raise PromptError(f"no prompt template {name_or_path!r}; shipped: {shipped}, "
                          "or give the path of a .txt file")
    return Prompt(name_or_path, ref.read_text(encoding="utf-8"))
