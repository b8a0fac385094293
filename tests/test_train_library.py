"""Trainers as library functions and as commands on an existing workdir.

- SFT on in-memory rows from given params, twice in one process (a loop of rounds): round 2 starts from
  round 1's params, which survive it.
- Rerunning a finished run reports its saved final metrics (not nan).
- A resume with another architecture fails in one line before writing anything: config.json is unchanged
  and the run still exports and loads in transformers; a changed lr is a warning and the run resumes.
"""

import json

import jax
import numpy as np
from tolerances import U32, logits_depth, logprob_atol

from storm_jax.config import load_config
from storm_jax.models.qwen import init_params
from storm_jax.train.cli import main as train_main
from storm_jax.train.export_cli import main as export_main
from storm_jax.train.sft import make_data_iterator, train_sft

ROWS = "storm_jax/resources/tiny/arith/train.sft_traj.jsonl"


def _step_losses(workdir) -> dict[int, float]:
    out = {}
    for line in open(f"{workdir}/metrics.jsonl"):
        r = json.loads(line)
        if r["split"] == "train":
            out[r["step"]] = r["loss"]
    return out


def _round_cfg(workdir):
    cfg = load_config(
        "configs/tiny_cpu.py",
        [
            f"workdir={workdir}",
            "train.steps=2",
            "train.log_every=1",
            "train.progress=false",
            "data.eval_path=",
            "train.eval_every=0",
            "data.seq_len=256",
            "data.batch_size=2",
            "checkpoint.save_every=10",
        ],  # fmt: skip
        num_devices=2,
    )
    return cfg


def _first_batch_loss(cfg, run, params, workdir) -> tuple[float, float]:
    """The SFT loss of `params` on the first batch the round trained on (rebuilt from its rows file), and a bound
    on its distance to the same loss computed by another program (the trainer's sharded, jitted step).

    The loss is a mean of n same-sign token terms -log p: each term within logprob_atol of the other program's
    (two evaluation orders of the logits, depth logits_depth), the mean adds each program's n-term sum
    rounding, 2 n u |loss|."""
    from storm_jax.models.qwen import forward

    c = json.loads(open(f"{workdir}/config.json").read())
    batch = next(make_data_iterator(cfg, run.model_cfg, path=c["data"]["path"], train=True))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    params = jax.device_get(params)
    loss, _ = run.loss_fn(params, batch, run.model_cfg)
    logits, _ = forward(params, batch["tokens"], run.model_cfg, positions=batch["positions"],
                        segment_ids=batch["segment_ids"])  # fmt: skip
    m = (batch["loss_mask"] > 0) & (batch["segment_ids"] != 0)
    n, T = int(m.sum()), batch["tokens"].shape[1]
    lg = np.asarray(logits)[m]  # the trained positions' logits
    bound = logprob_atol(lg, logits_depth(run.model_cfg, T)) + 2 * n * U32 * abs(float(loss))
    return float(loss), bound


def test_sft_as_a_library_function_two_rounds_from_given_params(tmp_path):
    rows = [json.loads(x) for x in open(ROWS).read().splitlines()[:8]]
    devs = jax.devices()[:2]
    cfg1, cfg2 = _round_cfg(tmp_path / "r1"), _round_cfg(tmp_path / "r2")
    from storm_jax.train.setup import resolve_model_config

    p0 = init_params(resolve_model_config(cfg1), jax.random.key(7))  # not cfg.seed's init
    quiet = lambda *a: None
    r1 = train_sft(cfg1, rows=rows, params=p0, echo=quiet, devices=devs)
    p1 = jax.device_get(r1["state"].params)
    r2 = train_sft(cfg2, rows=rows[::-1], params=r1["state"].params, echo=quiet, devices=devs)
    assert r1["step"] == r2["step"] == 2
    run = r1["run"]
    # Step 1 of each round is computed at its start params: p0 for round 1, round 1's result for round 2.
    l1, l2 = _step_losses(tmp_path / "r1"), _step_losses(tmp_path / "r2")
    (e1, b1), (e2, b2) = (_first_batch_loss(cfg1, run, p0, tmp_path / "r1"),
                          _first_batch_loss(cfg2, run, p1, tmp_path / "r2"))  # fmt: skip
    assert abs(l1[1] - e1) <= b1, (l1[1], e1, b1)
    assert abs(l2[1] - e2) <= b2, (l2[1], e2, b2)
    wrong, b0 = _first_batch_loss(cfg2, run, p0, tmp_path / "r2")  # round 2 did not start from p0
    assert abs(l2[1] - wrong) > b0, (l2[1], wrong, b0)
    # The caller's arrays survive the (donating) train step of the next round.
    for a, b in zip(jax.tree.leaves(jax.device_get(r1["state"].params)), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(jax.device_get(r2["state"].params)))
    )


def _cli(wd, *extra):
    return train_main(
        [
            "sft",
            "--config=configs/tiny_cpu.py:toy",
            f"--config.workdir={wd}",
            "--config.train.steps=3",
            "--config.train.progress=false",
            "--config.data.batch_size=8",
            "--config.data.eval_path=synthetic",
            "--config.train.eval_every=3",
            "--config.train.log_every=1",
            *extra,
        ]  # fmt: skip
    )


def test_rerun_of_a_finished_run_reports_its_saved_metrics(tmp_path, capsys):
    wd = str(tmp_path / "run")
    assert _cli(wd) == 0
    first = [s for s in capsys.readouterr().out.splitlines() if s.startswith("done:")]
    assert _cli(wd) == 0
    out = capsys.readouterr().out
    second = [s for s in out.splitlines() if s.startswith("done:")]
    assert "already finished at step 3" in out
    assert first == second and len(first) == 1 and "nan" not in first[0], (first, second)


def test_resume_with_another_architecture_fails_in_one_line_and_keeps_the_run(tmp_path, capsys):
    import torch
    import transformers

    wd, hf = str(tmp_path / "run"), str(tmp_path / "hf")
    assert _cli(wd, "--config.train.steps=2") == 0
    saved = open(f"{wd}/config.json").read()
    capsys.readouterr()
    assert _cli(wd, "--config.model.hidden_size=128") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.hidden_size 64 -> 128" in err[0], err
    assert open(f"{wd}/config.json").read() == saved  # nothing written by the refused resume
    assert export_main(["--workdir", wd, "--out", hf]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    assert model.config.hidden_size == 64

    # Changed hyper-parameters (lr, steps) are a warning, and the run resumes.
    assert _cli(wd, "--config.optim.lr=1e-2") == 0
    out = capsys.readouterr().out
    assert "warning: resume of" in out and "optim.lr changed" in out and "at step 2" in out
    assert json.loads(open(f"{wd}/config.json").read())["optim"]["lr"] == 1e-2


class _Rounds:
    """A caller-registered host state (e.g. a round counter of a policy <-> verifier loop)."""

    def __init__(self):
        self.n = 0

    def get_state(self):
        return {"n": self.n}

    def set_state(self, state):
        self.n = int(state["n"])


def test_loop_train_runs_any_loss_and_iterator_and_restores_registered_state(tmp_path):
    """storm_jax.train.loop.train: a registered loss over a plain iterator, extra state restored on resume."""
    from storm_jax.train.loop import LoopOptions, train
    from storm_jax.train.losses import make_loss
    from storm_jax.train.setup import build_setup
    from storm_jax.train.sft import SyntheticSFTIterator

    cfg = load_config("configs/tiny_cpu.py:toy", ["mesh.fsdp=2"], num_devices=2)
    setup = build_setup(cfg, devices=jax.devices()[:2])
    params = init_params(setup.model_cfg, jax.random.key(0))
    loss_fn = make_loss("sft", mesh_rules=setup.mesh_rules)

    def run(steps):
        it = SyntheticSFTIterator(setup.model_cfg.vocab_size, 32, 4, seed=1)
        rounds = _Rounds()

        def on_log(step, m, dt):
            rounds.n += 1
            return m

        opts = LoopOptions(workdir=str(tmp_path / "run"), steps=steps, save_every=1, async_save=False)
        res = train(setup, loss_fn, it, opts, params=params, extra={"rounds": rounds}, on_log=on_log,
                    echo=lambda *a: None)  # fmt: skip
        return res, it, rounds

    res, it, rounds = run(2)
    assert (res.step, res.resumed, it.index, rounds.n) == (2, False, 2, 2)
    res, it, rounds = run(3)
    assert (res.step, res.start_step, res.resumed, it.index, rounds.n) == (3, 2, True, 3, 3)
    assert np.isfinite(res.metrics["loss"])
