"""Word n-gram overlap between generated questions and the benchmark questions (contamination check)."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def benchmark_dir() -> str:
    """STORM_DATA_DIR, default ../shared/benchmarks relative to the working directory."""
    return os.environ.get("STORM_DATA_DIR", os.path.join("..", "shared", "benchmarks"))


def benchmark_questions(data_dir: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for k, line in enumerate(f, 1):
                try:
                    out.append(json.loads(line)["question"])
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{path}:{k}: bad benchmark row ({e})") from e
    return out


def ngram_set(texts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        w = words(t)
        grams.update(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return grams


def longest_shared_ngram(question: str, bench_grams: dict[int, set[tuple[str, ...]]]) -> int:
    """Largest n (among the keys of `bench_grams`) such that some word n-gram of `question` occurs in a
    benchmark question."""
    w = words(question)
    best = 0
    for n in sorted(bench_grams):
        grams = bench_grams[n]
        if any(tuple(w[i : i + n]) in grams for i in range(len(w) - n + 1)):
            best = n
        else:
            break  # no shared n-gram implies no shared longer one
    return best


def overlap_report(questions: list[str], bench: list[str], max_n: int = 16) -> dict:
    """Max over questions of the longest shared word n-gram, and the share of questions sharing an 8-gram."""
    bench_grams = {n: ngram_set(bench, n) for n in range(4, max_n + 1)}
    longest = [longest_shared_ngram(q, bench_grams) for q in questions]
    return {
        "questions": len(questions),
        "benchmark_questions": len(bench),
        "max_shared_ngram": max(longest, default=0),
        "frac_sharing_8gram": sum(x >= 8 for x in longest) / max(1, len(questions)),
    }
