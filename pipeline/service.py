"""The run's LLM service: the client actor, and the embedded teacher when no endpoint is set,
started the first time a stage calls the LLM (a rerun whose LLM stages are unchanged starts none).
"""

from __future__ import annotations

import contextlib
import logging

from rich.console import Console

from pipeline import runner
from pipeline.serve import Teacher

log = logging.getLogger("pipeline")


class LLMService:
    """The run's LLM client, started (with the embedded teacher when no ``base_url`` is set)
    the first time a stage needs it."""

    def __init__(self, cfg, stack: contextlib.ExitStack, console: Console):
        self.cfg, self.stack, self.console = cfg, stack, console
        self.handle = None
        self.teacher: Teacher | None = None
        self.seen_events = 0

    def __call__(self):
        if self.handle is None:
            base_url, log_file = self.cfg.llm.base_url, None
            if not base_url:
                log_file = self.cfg.run_dir / "logs" / "teacher.log"
                self.teacher = Teacher(log_file)
                base_url = self.stack.enter_context(self.teacher)
                self.console.print(f"[dim]embedded teacher {self.cfg.llm.model} at {base_url} "
                                   f"(first reply after {self.teacher.first_reply_s:.1f}s)[/dim]")
            self.handle = runner.start_llm(self.cfg.llm, base_url, self.cfg.llm_cache,
                                           embedded=not self.cfg.llm.base_url, log=log_file)
        return self.handle

    def failure(self) -> str | None:
        """The endpoint's failure, if the circuit breaker opened, with the teacher's record."""
        if self.handle is None:
            return None
        try:
            message = runner.ask(self.handle, "endpoint_failure")
        except Exception:  # the actor itself is gone: the stage's own error says more
            return None
        if message and self.teacher is not None and self.teacher.state():
            message += f"\n  watchdog: {self.teacher.state()}"
        return message

    def report_events(self) -> None:
        """Log what changed in the client since last asked (a JSON-schema fallback)."""
        if self.handle is None:
            return
        try:
            events = runner.ask(self.handle, "events")
        except Exception:  # the actor itself is gone: the stage reports that
            return
        for event in events[self.seen_events:]:
            log.warning("LLM client: %s", event)
            self.console.print(f"[yellow]LLM client: {event}[/yellow]")
        self.seen_events = len(events)
