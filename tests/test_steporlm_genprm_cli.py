"""`storm-jax genprm score` on a tiny random GenPRM checkpoint: one output row per trajectory, unparsable
critiques counted as failures (never scored), bad input rows rejected in one line with file:line and key."""

import json

import jax
import pytest

from storm_jax.configs.model_presets import preset
from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.steporlm.generation import load_model, save_model
from storm_jax.steporlm.genprm_cli import main
from storm_jax.steporlm.policy_format import segment_steps
from storm_jax.tokenizer import load_tokenizer

RES = "storm_jax/resources/tiny/arith"


@pytest.fixture(scope="module")
def genprm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("g") / "genprm"
    cfg = ModelConfig(**{k: v for k, v in preset("tiny").items() if k in ModelConfig.__dataclass_fields__})
    params = init_params(cfg, jax.random.key(3))
    save_model(cfg, params, str(d), tokenizer=load_tokenizer(None))
    cfg2, p2 = load_model(str(d))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)):  # float32 round trip is exact
        assert (a == b).all()
    return str(d)


@pytest.mark.slow  # ~20 s idle (sampler compilation), a minute on a loaded machine
def test_genprm_score_writes_one_row_per_trajectory(genprm_dir, tmp_path, capsys):
    traj = tmp_path / "t.jsonl"
    rows = [json.loads(x) for x in open(f"{RES}/train.sft_traj.jsonl").readlines()[:3]]
    with open(traj, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"problem_id": r["id"], "sample_index": i, "segments": r["segments"]}) + "\n")
    out = tmp_path / "o.jsonl"
    args = ["score", "--genprm", genprm_dir, "--trajectories", str(traj), "--out", str(out),
            "--problems", f"{RES}/train.problems.jsonl", "--max-new-tokens", "8", "--max-len", "768"]  # fmt: skip
    assert main(args) == 0
    got = [json.loads(x) for x in open(out)]
    assert [g["sample_index"] for g in got] == [0, 1, 2]
    want = [len(segment_steps(segments=r["segments"])) for r in rows]
    assert [g["num_steps"] for g in got] == want and want[1] == 3  # text, code+output, boxed
    for g in got:  # a random model writes no valid critique: a counted failure, no score
        assert g["ok"] is False and g["score"] is None and g["failure"]
    assert "3 critiques, 3 parse failures" in capsys.readouterr().err


def test_genprm_score_bad_row_is_one_line(genprm_dir, tmp_path, capsys):
    traj = tmp_path / "t.jsonl"
    traj.write_text('{"question": "max x", "text": "ok"}\n{"question": "max x"}\n')
    rc = main(["score", "--genprm", genprm_dir, "--trajectories", str(traj), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and err == f"storm-jax genprm: {traj}:2: key 'text': a solution needs text, completion or segments"
    )
