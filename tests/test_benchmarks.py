"""Benchmark registry: names, suites, loading the real files, and clear errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from storm_jax.data import benchmarks as bm

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get(bm.ENV_VAR) or REPO.parent / "shared" / "benchmarks")
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR} (set {bm.ENV_VAR})"
)


def test_registry_shape():
    assert len(bm.BENCHMARK_NAMES) == 11
    assert len(bm.DATASETS) == 32
    assert len(bm.SUITES["steporlm"]) == 7
    assert all(d.endswith(".llm4or_clean") for d in bm.SUITES["steporlm"])
    storm_b = [bm.DATASETS[d].benchmark for d in bm.SUITES["storm"]]
    fixed_b = [bm.DATASETS[d].benchmark for d in bm.SUITES["storm_fixed"]]
    assert storm_b == fixed_b == ["nl4opt", "mamo_easylp", "mamo_complexlp", "industryor", "optmath_bench"]
    for suite in bm.SUITES.values():
        assert all(d in bm.DATASETS for d in suite)


def test_resolve():
    assert bm.resolve("nl4opt.sirl") == ["nl4opt.sirl"]
    assert bm.resolve("storm_fixed, nl4opt.sirl ,logior.orthought") == [
        *bm.SUITES["storm_fixed"],
        "logior.orthought",
    ]
    with pytest.raises(ValueError, match="unknown benchmark or suite 'nl5opt'"):
        bm.resolve("nl5opt")
    with pytest.raises(ValueError, match="several variants; name one of: nl4opt.orlm"):
        bm.resolve("nl4opt")


def test_missing_dir_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(bm.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="set STORM_DATA_DIR"):
        bm.resolve_data_dir(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bm.resolve_data_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nl4opt.sirl.jsonl.*missing"):
        bm.load_dataset("nl4opt.sirl", tmp_path)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_malformed_lines_error_with_file_and_line(tmp_path):
    good = {"id": "nl4opt.sirl-0", "benchmark": "nl4opt", "variant": "sirl", "question": "q", "answer": 1.5}
    f = tmp_path / "nl4opt.sirl.jsonl"
    cases = [
        ("{not json", r":2: invalid JSON"),
        (json.dumps({**good, "id": "x", "answer": "12"}), r":2: 'answer' must be a finite number"),
        (json.dumps({**good, "id": "x", "answer": None}), r":2: null 'answer' needs 'answer_status'"),
        (json.dumps({**good, "id": "x", "question": ""}), r":2: key 'question' must be a non-empty string"),
        (json.dumps(good), r":2: duplicate id 'nl4opt.sirl-0' \(first at line 1\)"),
        (json.dumps([1]), r":2: expected a JSON object"),
    ]
    for bad, pattern in cases:
        _write(f, [json.dumps(good), bad])
        with pytest.raises(ValueError, match=re.escape(str(f)) + pattern):
            bm.read_rows(f)
    _write(
        f,
        [
            json.dumps(good),
            "",
            json.dumps({**good, "id": "b", "answer": None, "answer_status": "infeasible"}),
        ],
    )
    rows = bm.load_dataset("nl4opt.sirl", tmp_path)
    assert [(r.id, r.answer, r.answer_status) for r in rows] == [
        ("nl4opt.sirl-0", 1.5, None),
        ("b", None, "infeasible"),
    ]
    _write(f, [json.dumps({**good, "variant": "orlm"})])
    with pytest.raises(ValueError, match="is 'nl4opt.orlm', expected 'nl4opt.sirl'"):
        bm.load_dataset("nl4opt.sirl", tmp_path)


@needs_data
def test_load_all_real_files_match_readme_counts():
    data = bm.load("all", DATA_DIR)
    assert set(data) == set(bm.DATASETS)
    for name, rows in data.items():
        assert len(rows) == bm.DATASETS[name].n, name
    flat = [r for rows in data.values() for r in rows]
    assert len(flat) == 7853  # README total
    # README: 62 infeasible + 25 unknown null answers overall; nl4opt.orlm has 22 infeasible
    assert sum(r.answer_status == "infeasible" for r in flat) == 62
    assert sum(r.answer_status == "unknown" for r in flat) == 25
    assert sum(r.answer is None for r in data["nl4opt.orlm"]) == 22
    r0 = data["nl4opt.sirl"][0]
    assert r0.id == "nl4opt.sirl-0" and r0.answer == 1160.0 and "ducks" in r0.question
    with pytest.raises(dataclasses_frozen_error()):
        r0.answer = 1.0  # type: ignore[misc]


@needs_data
def test_env_var_is_used(monkeypatch):
    monkeypatch.setenv(bm.ENV_VAR, str(DATA_DIR))
    rows = bm.load("steporlm")
    assert [len(v) for v in rows.values()] == [214, 545, 111, 178, 18, 42, 403]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError
