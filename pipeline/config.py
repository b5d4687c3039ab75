"""Run configuration: one TOML file parsed into pydantic models.

Errors name the file and the key path (``stages.ingest.max_chars``) and are raised before any
work starts. Stage tables are validated against the ``Config`` model of their stage module; the
order of ``[stages.*]`` tables in the file is the order the stages run in.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sysconfig
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import stage as stage_api
from pipeline.llm import LLMConfig


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (file, key path, what to do)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RunSection(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    root: str = "runs"
    seed: int = 0


class RaySection(Strict):
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=2000, ge=1)


class SourceConfig(Strict):
    """One input: a JSONL file/folder, a Parquet file/folder, or a folder of text/code files."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["jsonl", "parquet", "files"]
    path: str
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    text_field: str = "text"
    id_field: str | None = None
    license: str = "unknown"
    sample: float = Field(default=1.0, gt=0.0, le=1.0)
    follow_symlinks: bool = False  # files: follow links that leave the folder (loops never)

    @field_validator("path")
    @classmethod
    def _expand(cls, value: str) -> str:
        return expand_placeholders(value)


class DatasetSpec(Strict):
    """A final output: the kept rows of one stage, published with a dataset card."""

    from_stage: str = Field(alias="from")
    description: str = ""
    columns: list[str] | None = None
    license: str | None = None
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    language: list[str] = Field(default_factory=list)


class StageEntry(Strict):
    """Engine-level keys of a ``[stages.NAME]`` table; the rest belongs to the stage's Config."""

    name: str
    kind: str
    input: str | None = None
    uses: list[str] = Field(default_factory=list)  # other earlier stages whose output it reads
    enabled: bool = True
    config: Any = None
    module: Any = Field(default=None, exclude=True)

    def config_hash(self, extra: Any = None) -> str:
        payload = {
            "kind": self.kind,
            "version": getattr(self.module, "VERSION", "1"),
            "config": self.config.model_dump(mode="json"),
            "extra": extra,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class PipelineConfig(Strict):
    run: RunSection
    ray: RaySection = Field(default_factory=RaySection)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    stages: list[StageEntry]
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict)
    train: list[Any] = Field(default_factory=list)  # trainers.config.TrainEntry, in file order
    eval: Any = None  # trainers.config.EvalConfig
    ablation: dict[str, Any] = Field(default_factory=dict)  # trainers.config.AblationConfig
    path: Path = Field(exclude=True)
    raw: dict = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def run_dir(self) -> Path:
        root = Path(self.run.root)
        if not root.is_absolute():
            root = self.path.parent / root
        return (root / self.run.name).resolve()

    def stage(self, name: str) -> StageEntry:
        for entry in self.stages:
            if entry.name == name:
                return entry
        raise ConfigError(f"{self.path}: no stage named {name!r}; stages are {self.stage_names()}")

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def needs_llm(self, only: list[str] | None = None) -> bool:
        return any(stage_api.uses_llm(s.module, s.config) for s in self.stages
                   if s.enabled and (only is None or s.name in only))

    @property
    def llm_cache(self) -> Path:
        if self.llm.cache:
            path = Path(self.llm.cache)
            return path if path.is_absolute() else (self.path.parent / path).resolve()
        return self.run_dir / "llm-cache" / "cache.sqlite"


PLACEHOLDERS = {
    "python_stdlib": lambda: sysconfig.get_paths()["stdlib"],
    "site_packages": lambda: sysconfig.get_paths()["purelib"],
}


def expand_placeholders(value: str) -> str:
    """Expand ``{python_stdlib}`` and ``{site_packages}`` (the running interpreter's paths)."""
    for key, resolve in PLACEHOLDERS.items():
        token = "{" + key + "}"
        if token in value:
            value = value.replace(token, resolve())
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value``; the value is read as TOML, or taken as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key path")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {'.'.join(parts)}: {where} is not a valid list index")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: {where} is not a table")
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {'.'.join(parts)}: cannot set {last!r} here")


def _format_errors(err: ValidationError, path: Path, prefix: str = "") -> str:
    lines = [f"invalid configuration in {path}:"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling, or see `pipeline init` for the keys)"
        elif "input" in item and item["type"] != "missing":
            msg = f"{msg} (got {item['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


ENGINE_STAGE_KEYS = {"kind", "input", "uses", "enabled"}


def _build_stage(name: str, table: Any, path: Path) -> StageEntry:
    if not isinstance(table, dict):
        raise ConfigError(f"invalid configuration in {path}:\n  stages.{name}: expected a table")
    kind = table.get("kind", name)
    try:
        module = stage_api.load_stage_module(kind)
    except stage_api.StageLoadError as exc:
        raise ConfigError(f"invalid configuration in {path}:\n  stages.{name}.kind: {exc}") from exc
    own = {k: v for k, v in table.items() if k not in ENGINE_STAGE_KEYS}
    try:
        cfg = module.Config.model_validate(own)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path, f"stages.{name}.")) from exc
    try:
        entry = StageEntry(
            name=name,
            kind=kind,
            input=table.get("input"),
            uses=table.get("uses", []),
            enabled=table.get("enabled", True),
        )
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path, f"stages.{name}.")) from exc
    entry.config = cfg
    entry.module = module
    return entry


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, override and validate a run configuration; raise ConfigError on any problem."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (create one with `pipeline init DIR`)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    return config_from_dict(data, path)


def config_from_dict(data: dict, path: Path) -> PipelineConfig:
    data = copy.deepcopy(data)
    stage_tables = data.pop("stages", None)
    if not isinstance(stage_tables, dict) or not stage_tables:
        raise ConfigError(
            f"invalid configuration in {path}:\n  stages: at least one [stages.NAME] table is needed"
        )
    entries = [_build_stage(name, table, path) for name, table in stage_tables.items()]
    train_tables, eval_table = data.pop("train", {}), data.pop("eval", None)
    ablation_tables = data.pop("ablation", {})
    try:
        cfg = PipelineConfig.model_validate({**data, "stages": [], "path": path, "raw": {}})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path)) from exc
    cfg.stages = entries
    _build_training(cfg, train_tables, eval_table, path)
    _build_ablations(cfg, ablation_tables, path)
    for src in cfg.sources:
        if "://" not in src.path and not Path(src.path).is_absolute():
            src.path = str((path.parent / src.path).resolve())
    cfg.raw = {**data, "stages": stage_tables, "train": train_tables, "eval": eval_table,
               "ablation": ablation_tables}
    _check_graph(cfg)
    return cfg


def _build_training(cfg: PipelineConfig, train_tables: Any, eval_table: Any, path: Path) -> None:
    """``[train.*]`` and ``[eval]``: validated now, trained after the datasets are published."""
    from trainers import config as train_config

    if not isinstance(train_tables, dict):
        raise ConfigError(f"invalid configuration in {path}:\n  train: expected [train.NAME] tables")
    cfg.train = train_config.build_entries(train_tables, _format_errors, path)
    if eval_table is not None:
        try:
            cfg.eval = train_config.EvalConfig.model_validate(eval_table)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, path, "eval.")) from exc
    names = [e.name for e in cfg.train]
    for model in cfg.eval.models if cfg.eval else []:
        if model not in names and not (path.parent / model).exists() and not Path(model).exists():
            raise ConfigError(f"invalid configuration in {path}:\n  eval.models: {model!r} is "
                              "no [train.*] model and no existing folder")


def _build_ablations(cfg: PipelineConfig, tables: Any, path: Path) -> None:
    """``[ablation.*]``: validated now; their sources must be datasets, stages or paths."""
    from trainers.config import AblationConfig

    if not isinstance(tables, dict):
        raise ConfigError(f"invalid configuration in {path}:\n  ablation: expected [ablation.NAME] tables")
    problems = []
    for name, table in tables.items():
        try:
            conf = AblationConfig.model_validate(table)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, path, f"ablation.{name}.")) from exc
        for ref in conf.sources() + [e.holdout for e in conf.evalsets if e.holdout]:
            stage = ref.split(":", 1)[1] if ref.startswith("stage:") else None
            known = stage in cfg.stage_names() if stage else (
                ref in cfg.datasets or (path.parent / ref).exists() or Path(ref).exists())
            if not known:
                problems.append(f"ablation.{name}: {ref!r} is no dataset, no stage:NAME of this "
                                "run and no existing path")
        for spec in conf.evalsets:
            if spec.path and not (path.parent / spec.path).exists():
                problems.append(f"ablation.{name}.evalsets: {spec.name!r}: {spec.path} does not exist")
        if conf.tokenizer and conf.tokenizer not in [e.name for e in cfg.train] \
                and not (path.parent / conf.tokenizer).exists() and not Path(conf.tokenizer).exists():
            problems.append(f"ablation.{name}.tokenizer: {conf.tokenizer!r} is no [train.*] "
                            "tokenizer and no existing folder")
        cfg.ablation[name] = conf
    if problems:
        raise ConfigError(f"invalid configuration in {path}:\n  " + "\n  ".join(problems))


def _check_graph(cfg: PipelineConfig) -> None:
    problems = []
    names = cfg.stage_names()
    enabled = [s for s in cfg.stages if s.enabled]
    if not enabled:
        problems.append("stages: every stage is disabled")
    seen: list[str] = []
    for entry in cfg.stages:
        role = stage_api.role_of(entry.module)
        for key, refs in (("input", [entry.input] if entry.input else []), ("uses", entry.uses)):
            for ref in refs:
                if ref not in seen:
                    hint = "it must be an earlier stage" if ref in names else "no such stage"
                    problems.append(f"stages.{entry.name}.{key}: {ref!r}: {hint}")
        if entry.enabled and role == "source" and not cfg.sources:
            problems.append(
                f"sources: stage {entry.name!r} reads the sources, but none is configured; "
                "add a [[sources]] table (or start from `pipeline init DIR --example code`)"
            )
        if role != "source" and entry.input is None and not seen:
            problems.append(f"stages.{entry.name}: the first stage must read the sources")
        seen.append(entry.name)
    for i, src in enumerate(cfg.sources):
        if [s.name for s in cfg.sources].count(src.name) > 1:
            problems.append(f"sources.{i}.name: {src.name!r} is used twice")
        if "://" not in src.path and not Path(src.path).exists():
            problems.append(f"sources.{i}.path: {src.path} does not exist")
    for name, spec in cfg.datasets.items():
        if spec.from_stage not in names:
            problems.append(f"datasets.{name}.from: no stage named {spec.from_stage!r}")
    if problems:
        raise ConfigError(f"invalid configuration in {cfg.path}:\n  " + "\n  ".join(problems))
