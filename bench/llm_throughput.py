"""LLM layer throughput: achieved vs ideal requests/s, cache hits/s, embedded teacher tokens/s.

Against a local server that answers after a fixed latency L (0.2 s), with the client's
concurrency limit C in {1, 8, 64}, the ideal rate is C / L; efficiency = achieved / ideal.
The embedded teacher: ``teacher_first_reply_s`` (start to its first completion) and
``teacher_tokens_per_s``. A component that does not work (a teacher that does not start or
answers nothing) fails the benchmark: non-zero exit, no figures. Writes ``bench/results/llm.json``.

    python bench/llm_throughput.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from pipeline.llm import LLMClient, LLMConfig, Request  # noqa: E402
from pipeline.serve import Teacher, TeacherError  # noqa: E402
from tests.llm_server import ScriptedServer  # noqa: E402

LATENCY = 0.2


def prompts(n: int, tag: str) -> list[Request]:
    return [Request([{"role": "user", "content": f"{tag} question {i}"}]) for i in range(n)]


async def timed(client: LLMClient, requests: list[Request]) -> float:
    start = time.perf_counter()
    results = await client.many(requests)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return time.perf_counter() - start


def efficiency(server, concurrency: int) -> float:
    requests = prompts(max(20, 20 * concurrency), f"c{concurrency}")  # 20 waves: warm-up amortized

    async def main():
        client = LLMClient(LLMConfig(model="scripted", max_concurrency=concurrency), server.base_url)
        try:
            return await timed(client, requests)
        finally:
            await client.close()

    seconds = asyncio.run(main())
    return (len(requests) / seconds) / (concurrency / LATENCY)


def cache_hits_per_s(server: ScriptedServer, folder: Path) -> float:
    requests = prompts(5000, "cached")

    async def main():
        client = LLMClient(LLMConfig(model="scripted", max_concurrency=64), server.base_url,
                           folder / "cache.sqlite")
        await client.many(requests)  # fill
        try:
            return await timed(client, requests)
        finally:
            await client.close()

    return len(requests) / asyncio.run(main())


def teacher_figures(folder: Path) -> tuple[float, float]:
    """(seconds from start to the first completion, completion tokens per second)."""
    teacher = Teacher(folder / "teacher.log")
    try:
        base_url = teacher.start()
    except TeacherError as exc:
        require(False, f"the embedded teacher did not start: {exc}")
    try:
        async def main():
            client = LLMClient(LLMConfig(max_tokens=96, temperature=0.0), base_url)
            await client.chat(prompts(1, "warm")[0])
            start = time.perf_counter()
            results = [await client.chat(r) for r in
                       [Request([{"role": "user", "content": f"Explain {topic} in a paragraph."}])
                        for topic in ("recursion", "photosynthesis", "binary search")]]
            seconds = time.perf_counter() - start
            await client.close()
            failed = [f"{r.error}: {r.detail}" for r in results if not r.ok]
            require(not failed, f"the teacher failed requests: {failed[:2]}")
            tokens = sum(r.completion_tokens for r in results)
            require(tokens > 0, "the teacher answered with no completion tokens")
            return tokens / seconds

        tokens_per_s = asyncio.run(main())
    finally:
        teacher.stop()
    require(not teacher.deaths, f"the teacher died during the benchmark: {teacher.state()}")
    return teacher.first_reply_s, tokens_per_s


class ServerProcess:
    """The fixed-latency server in its own process, so it does not share the client's GIL."""

    def __init__(self, folder: Path, latency: float):
        self.port_file = folder / f"port-{latency}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.llm_server", "--latency",
                                      str(latency), "--port-file", str(self.port_file)], cwd=ROOT)
        while not (self.port_file.exists() and self.port_file.read_text()):
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.port_file.read_text()}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    with ServerProcess(folder, LATENCY) as slow:
        eff = {c: efficiency(slow, c) for c in (1, 8, 64)}
    with ScriptedServer() as fast:
        hits = cache_hits_per_s(fast, folder)
    first_reply_s, tokens_per_s = teacher_figures(folder)
    results = {
        "latency_s": LATENCY,
        "efficiency_c1": round(eff[1], 3), "efficiency_c8": round(eff[8], 3),
        "efficiency_c64": round(eff[64], 3),
        "cache_hits_per_s": round(hits, 1),
        "teacher_first_reply_s": round(first_reply_s, 2),
        "teacher_tokens_per_s": round(tokens_per_s, 1),
    }
    write("llm", results)


if __name__ == "__main__":
    main()
