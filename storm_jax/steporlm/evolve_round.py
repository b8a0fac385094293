"""One round of the self-evolving loop: samples -> critiques -> pairs -> weighted DPO -> GenPRM SFT -> metrics.

Each stage of `run_round` reads what earlier stages wrote to disk (never in-memory results), so a round
resumed after a kill computes exactly what an uninterrupted one does. See storm_jax.steporlm.evolve.
"""

from __future__ import annotations

import os
import time
from typing import Any

from storm_jax.steporlm import critic as critic_mod
from storm_jax.steporlm.evolve import (
    pair_samples,
    prompt_messages,
    read_jsonl,
    solution_text,
    stage_config,
    steps_of,
    write_json,
    write_jsonl,
)
from storm_jax.steporlm.pairs import build_pairs


def _seed(base: int, r: int, i: int) -> int:
    return (base * 1_000_003 + r * 10_007 + i) % (2**31 - 1)


def sample_stage(ev, r: int, d: str, prev: str) -> None:
    """k policy samples per problem with the code interpreter (or one pool run of the final program)."""
    from storm_jax.rewards import ScoringConfig, is_correct
    from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, rollout
    from storm_jax.sampling.sampler import EngineConfig, SamplingParams
    from storm_jax.steporlm.policy_format import final_program
    from storm_jax.tokenizer import encode_prompt, eos_ids
    from storm_jax.train.grpo import trajectory_answer

    e = ev.e
    params = ev.load(f"{prev}/policy")
    reqs = []
    for i, row in enumerate(ev.rows):
        ids = encode_prompt(
            ev.tok, prompt_messages(e, row.question), enable_thinking=ev.cfg.data.enable_thinking
        )
        reqs.append(
            RolloutRequest(ids, n=e.samples_per_problem, seed=_seed(ev.cfg.seed, r, i), meta={"id": row.id})
        )
    sp = SamplingParams(temperature=e.temperature, top_k=e.top_k, top_p=e.top_p,
                        max_new_tokens=e.max_response_tokens, eos_ids=tuple(eos_ids(ev.tok)))  # fmt: skip
    rc = RolloutConfig(
        sampling=sp, tools=e.tools, max_tool_calls=e.max_tool_calls, exec_timeout_s=e.exec_timeout_s
    )
    engine = EngineConfig(num_slots=e.num_slots, max_len=e.max_len, chunk_size=e.decode_chunk)
    trajs = rollout(params, ev.model_cfg, ev.tok, reqs, rc, ev.pool, engine=engine)
    # The titled layout runs its final program once, after sampling (the STORM layout ran its code inline).
    finals = [final_program(solution_text(t.text)) if not t.executions else None for t in trajs]
    todo = [i for i, f in enumerate(finals) if f]
    ran = dict(zip(todo, ev.pool.map([finals[i] for i in todo]))) if todo else {}
    rows = []
    for i, t in enumerate(trajs):
        row = ev.by_id[t.meta["id"]]
        ex = ran.get(i)
        answer = trajectory_answer(t, "auto")
        if answer is None and ex is not None and ex.status == "ok":
            answer = ex.answer
        execs = [(x.status, x.answer) for x in t.executions] + (
            [(ex.status, ex.answer)] if ex is not None else []
        )
        rows.append({
            "problem_id": row.id, "sample_index": t.sample_index, "text": t.text,
            "prompt_ids": t.prompt_ids, "response_ids": t.response_ids, "loss_mask": t.loss_mask,
            "answer": answer, "correct": is_correct(answer, row.answer, row.answer_status, e.protocol, ScoringConfig()),
            "executions": [{"status": s, "answer": a} for s, a in execs], "stop_reason": t.stop_reason,
        })  # fmt: skip
    write_jsonl(ev.path(d, "samples.jsonl"), rows)


def critique_stage(ev, r: int, d: str, prev: str) -> None:
    """The GenPRM's critique of every sample (own sampler, greedy by default), and the critic's."""
    from storm_jax.steporlm.generation import CritiqueGenerator

    e = ev.e
    samples = read_jsonl(ev.path(d, "samples.jsonl"))
    items = [(ev.by_id[s["problem_id"]].question, steps_of(s["text"])) for s in samples]
    gen = CritiqueGenerator(ev.model_cfg, ev.load(f"{prev}/genprm"), ev.tok, num_slots=e.num_slots,
                            max_len=e.critique_max_len, max_new_tokens=e.critique_tokens,
                            temperature=e.critique_temperature, chunk_size=e.decode_chunk,
                            seed=_seed(ev.cfg.seed + 7, r, 0))  # fmt: skip
    out = gen.generate(items)
    rows = []
    for s, (q, steps), g in zip(samples, items, out):
        c = g.critique
        row = {"problem_id": s["problem_id"], "sample_index": s["sample_index"], "num_steps": len(steps),
               "genprm": {"text": g.text, "ok": c.ok, "failure": c.failure, "verdicts": c.verdicts, "final": c.final,
                          "score": sum(c.verdicts) / len(steps) if c.ok else None, "new_tokens": g.new_tokens},
               "critic": None}  # fmt: skip
        program = ev.by_id[s["problem_id"]].meta.get("program")
        if program and steps:
            last = s["executions"][-1] if s["executions"] else None
            text, pc, _ = critic_mod.critique(
                q, program, solution_text(s["text"]), execution=last, style=e.critique_style
            )
            row["critic"] = {"text": text, "ok": pc.ok, "failure": pc.failure, "verdicts": pc.verdicts,
                             "final": pc.final, "score": sum(pc.verdicts) / len(steps) if pc.ok else None}  # fmt: skip
        rows.append(row)
    write_jsonl(ev.path(d, "critiques.jsonl"), rows)


def pairs_stage(ev, r: int, d: str, prev: str) -> None:
    """Pairs by the StepORLM rule as token-level preference rows (the sampled ids, kept exactly)."""
    e = ev.e
    samples = read_jsonl(ev.path(d, "samples.jsonl"))
    crits = read_jsonl(ev.path(d, "critiques.jsonl"))
    pairs, stats = build_pairs(pair_samples(samples, crits, e.pair_scorer), mode=e.pair_mode,
                               max_pairs_per_problem=e.max_pairs_per_problem, min_delta=e.min_delta)  # fmt: skip
    by_key = {(s["problem_id"], s["sample_index"]): s for s in samples}
    rows = []
    for p in pairs:
        c, j = by_key[(p.problem_id, p.chosen)], by_key[(p.problem_id, p.rejected)]
        rows.append({"prompt_ids": c["prompt_ids"], "chosen_ids": c["response_ids"], "chosen_mask": c["loss_mask"],
                     "rejected_ids": j["response_ids"], "rejected_mask": j["loss_mask"], "weight": p.weight,
                     "meta": p.to_json()})  # fmt: skip
    write_jsonl(ev.path(d, "pairs.jsonl"), rows)
    write_json(ev.path(d, "pair_stats.json"), stats)


def dpo_stage(ev, r: int, d: str, prev: str) -> None:
    """Weighted DPO of the policy on the round's pairs (reference = the round's start policy)."""
    import jax

    from storm_jax.train.dpo import train_dpo

    e = ev.e
    rows = [{k: v for k, v in x.items() if k != "meta"} for x in read_jsonl(ev.path(d, "pairs.jsonl"))]
    n_pairs = len(rows)
    need = e.dpo_steps * e.dpo_batch_pairs
    if e.dpo_subset and len(rows) > need:
        # dpo_steps batches see at most `need` pairs: keep the heaviest (then the earliest), so the reference
        # log-probs are precomputed for the pairs trained on only
        keep = sorted(sorted(range(len(rows)), key=lambda i: (-rows[i]["weight"], i))[:need])
        rows = [rows[i] for i in keep]
    if not rows:
        ev.copy_model(f"{prev}/policy", f"{d}/policy")
        write_json(ev.path(d, "dpo.json"), {"skipped": "no pairs", "steps": 0})
        return
    c = stage_config(ev.cfg, ev.fresh_run_dir(ev.path(d, "dpo")), "dpo", train__steps=e.dpo_steps,
                     optim__lr=e.dpo_lr, optim__warmup_steps=0, data__seq_len=e.dpo_seq_len,
                     data__batch_size=e.dpo_batch_pairs, data__pack=False, data__overlong="drop",
                     data__num_epochs=0, train__grad_accum=1)  # fmt: skip
    c.dpo.reference = "precomputed"
    res = train_dpo(c, rows=rows, params=ev.load(f"{prev}/policy"), echo=ev.echo)
    ev.save(jax.device_get(res["state"].params), f"{d}/policy")
    write_json(ev.path(d, "dpo.json"), {"steps": res["step"], "loss": res["loss"], "accuracy": res.get("accuracy"),
                                        "pairs": len(rows), "pairs_built": n_pairs})  # fmt: skip


def genprm_stage(ev, r: int, d: str, prev: str) -> None:
    """GenPRM SFT on its own critiques whose final verdict agrees with the solver (+ the critic's, bootstrap)."""
    import jax

    e = ev.e
    samples = read_jsonl(ev.path(d, "samples.jsonl"))
    crits = read_jsonl(ev.path(d, "critiques.jsonl"))
    rows, n_own, n_critic = [], 0, 0
    for s, c in zip(samples, crits):
        q, steps = ev.by_id[s["problem_id"]].question, steps_of(s["text"])
        for src in ("genprm", "critic") if e.genprm_bootstrap else ("genprm",):
            x = c.get(src)
            if x and x["ok"] and x["final"] == s["correct"]:
                rows.append(ev.critique_row(q, steps, x["text"]))
                n_own, n_critic = n_own + (src == "genprm"), n_critic + (src == "critic")
    info: dict[str, Any] = {"rows_own": n_own, "rows_critic": n_critic}
    if e.frozen_genprm or not rows or not e.genprm_sft_steps:
        ev.copy_model(f"{prev}/genprm", f"{d}/genprm")
        info["skipped"] = "frozen" if e.frozen_genprm else "no rows" if not rows else "no steps"
    else:
        res = ev.genprm_sft(rows, ev.load(f"{prev}/genprm"), ev.path(d, "genprm_sft"), e.genprm_sft_steps,
                            lr=e.genprm_sft_lr)  # fmt: skip
        ev.save(jax.device_get(res["state"].params), f"{d}/genprm")
        info.update(loss=res["loss"], steps=res["step"])
    write_json(ev.path(d, "genprm_sft.json"), info)


def _rate(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def metrics_stage(ev, r: int, d: str, prev: str) -> dict:
    """The round's metrics row (deterministic: no timings)."""
    import json

    samples = read_jsonl(ev.path(d, "samples.jsonl"))
    crits = read_jsonl(ev.path(d, "critiques.jsonl"))
    stats = json.load(open(ev.path(d, "pair_stats.json")))
    dpo = json.load(open(ev.path(d, "dpo.json")))
    gsft = json.load(open(ev.path(d, "genprm_sft.json")))
    g = [c["genprm"] for c in crits]
    m = {
        "round": r,
        "samples": len(samples),
        "accuracy": _rate([s["correct"] for s in samples]),
        "parse_failure_rate": _rate([not x["ok"] for x in g]),
        "genprm_parsed": sum(x["ok"] for x in g),
        "genprm_parsed_by_steps": {
            str(n): f"{sum(c['genprm']['ok'] for c in crits if c['num_steps'] == n)}/"
            f"{sum(c['num_steps'] == n for c in crits)}"
            for n in sorted({c["num_steps"] for c in crits})
        },
        "genprm_agreement": _rate([x["final"] == s["correct"] for x, s in zip(g, samples) if x["ok"]]),
        "critic_agreement": _rate(
            [c["critic"]["final"] == s["correct"] for c, s in zip(crits, samples) if c["critic"]]
        ),
        "mean_process_score": _rate([x["score"] for x in g if x["ok"]]),
        "pairs": stats["pairs"],
        "pairs_by_kind": stats["by_kind"],
        "pairs_skipped": stats["skipped"],
        "dpo_steps": dpo["steps"],
        "dpo_loss": dpo.get("loss"),
        "genprm_sft_rows": gsft["rows_own"] + gsft["rows_critic"],
        "genprm_sft_loss": gsft.get("loss"),
        "failures": {},
    }
    for x in g:
        if not x["ok"]:
            key = x["failure"].split(": ", 1)[-1].split(" (")[0]
            m["failures"][key] = m["failures"].get(key, 0) + 1
    write_json(ev.path(d, "metrics.json"), m)
    return m


STAGES = (("samples", sample_stage), ("critiques", critique_stage), ("pairs", pairs_stage),
          ("dpo", dpo_stage), ("genprm", genprm_stage))  # fmt: skip


def run_round(ev, r: int, d: str, prev: str) -> dict:
    """Run the undone stages of round r (directory d, previous checkpoints in prev); its metrics row."""
    t_round = time.perf_counter()
    for name, fn in STAGES:
        if ev.done(d, name):
            continue
        ev.echo(f"== round {r}: {name} ==")
        t0 = time.perf_counter()
        fn(ev, r, d, prev)
        ev.mark(d, name, t0)
    if not ev.done(d, "metrics"):
        t0 = time.perf_counter()
        metrics_stage(ev, r, d, prev)
        ev.mark(d, "metrics", t0)
    import json

    m = json.load(open(os.path.join(ev.path(d), "metrics.json")))
    ev.echo(f"round {r}: accuracy {m['accuracy']:.3f}, parse failures {m['parse_failure_rate']:.3f}, "
            f"pairs {m['pairs']} ({time.perf_counter() - t_round:.0f} s)")  # fmt: skip
    return m
