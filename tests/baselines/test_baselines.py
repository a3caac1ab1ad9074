"""RL baselines (GRPO, PPO through TRL) on the tiny random model: config pass-through, the reward TRL sees,
end-to-end runs with the shared run log, interrupted runs that resume, finished runs that are skipped."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from es_repro.baselines import generation, reward_model, run_baseline, session
from es_repro.baselines.trl_config import build_args, completions_per_step, make_plan
from es_repro.config import ConfigError
from es_repro.engines.hf.generation import cut_at_stop
from es_repro.models.loading import load_model
from es_repro.models.tiny import build_tiny_model
from es_repro.run.log import RunLog, read_jsonl
from es_repro.tasks import build_task, columns, score, task_from_config
from tests.helpers import make_cfg

# Tiny runs: 8 completions per optimizer step, 40-sample budget = 5 steps; ES's generation = 6 x 4 = 24 samples.
GRPO = ["baseline=grpo", "baseline.trl.num_generations=4", "baseline.trl.per_device_train_batch_size=4",
        "baseline.trl.gradient_accumulation_steps=2", "baseline.trl.learning_rate=0.01", "baseline.samples_budget=40",
        "baseline.eval_every_samples=16", "baseline.completions_to_log=100", "checkpoint_every=1", "eval.kl_samples=1"]
PPO = ["baseline=ppo", "baseline.trl.per_device_train_batch_size=4", "baseline.trl.gradient_accumulation_steps=2",
       "baseline.trl.learning_rate=0.01", "baseline.value_learning_rate=0.01", "baseline.samples_budget=40",
       "baseline.eval_every_samples=16", "baseline.completions_to_log=100", "checkpoint_every=1", "eval.kl_samples=1"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to share: with a busy CPU, two threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ config
def test_grpo_config_is_explicit_and_passes_trl_fields_through(tmp_path):
    cfg = make_cfg(GRPO + ["baseline.trl.epsilon=0.3", "task.max_new_tokens=5"])
    args = build_args(cfg, tmp_path)
    assert type(args).__name__ == "GRPOConfig"
    assert (args.loss_type, args.beta, args.num_generations, args.max_completion_length) == ("grpo", 0.001, 4, 5)
    assert args.epsilon == 0.3 and args.learning_rate == 0.01 and args.seed == cfg.seed
    assert completions_per_step("grpo", args) == 8
    plan = make_plan(cfg, train_rows=4, per_step=8)
    assert (plan.budget, plan.steps, plan.save_steps) == (40, 5, 3)  # save: 1 ES generation = 24 samples = 3 steps
    # budget 0 = the ES budget of the same config: 4 generations x 6 members x 4 prompts
    es_budget = make_plan(make_cfg(GRPO + ["baseline.samples_budget=0"]), train_rows=4, per_step=8)
    assert (es_budget.budget, es_budget.steps) == (96, 12)
    assert make_plan(cfg, train_rows=4, per_step=30).steps == math.ceil(40 / 30)


def test_ppo_config_maps_kl_and_budget(tmp_path):
    cfg = make_cfg(PPO + ["baseline.kl_coef=0.005", "baseline.trl.num_ppo_epochs=2"])
    args = build_args(cfg, tmp_path, steps=5)
    assert type(args).__name__ == "PPOConfig"
    assert (args.kl_coef, args.num_ppo_epochs, args.stop_token, args.total_episodes) == (0.005, 2, "eos", 40)


@pytest.mark.parametrize("overrides, message", [
    (GRPO + ["baseline.trl.learning_rat=1e-5"], "baseline.trl.learning_rat is not a field of trl.GRPOConfig"),
    (GRPO + ["baseline.trl.learning_rat=1e-5"], "did you mean learning_rate"),
    (PPO + ["baseline.trl.num_generations=8"], "baseline.trl.num_generations is not a field of trl.experimental.ppo.PPOConfig"),
    (GRPO + ["baseline.trl.max_steps=3"], "use baseline.samples_budget instead"),
    (GRPO + ["baseline.trl.beta=0.1"], "use baseline.kl_coef instead"),
    (GRPO + ["baseline.trl.num_generations=3"], "rejected by trl.GRPOConfig"),  # 8 completions are not groups of 3
    (["baseline.trl.learning_rate=1e-5"], "only used by baseline=grpo or baseline=ppo"),
    (["baseline.method=dpo"], "baseline.method='dpo' is not allowed"),
])
def test_bad_baseline_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_cfg(overrides)


def test_rl_grid_presets_compose_the_papers_grid():
    """`python -m es_repro -m experiment=rl_grid_*` sweeps these; every point (12 + 44, ~10 s in all) must compose,
    validate (load_config: TRL's own checks too) and carry its own values, and together they are the paper's grid."""
    import itertools

    from es_repro.config import compose, load_config

    grids = {}
    for exp in ("rl_grid_countdown", "rl_grid_conciseness"):
        params = dict(compose([f"experiment={exp}"], return_hydra_config=True).hydra.sweeper.params)
        points = list(itertools.product(*[str(v).split(",") for v in params.values()]))
        grids[exp] = [load_config(compose([f"experiment={exp}", *(f"{k}={v}" for k, v in zip(params, point))]))
                      for point in points]
    countdown, conciseness = grids["rl_grid_countdown"], grids["rl_grid_conciseness"]
    # Table 1: PPO, GRPO (group 30), GRPO (group 8) x KL {1e-3, 5e-3} x learning rate {1e-6, 1e-5}
    assert len(countdown) == 12
    assert sorted((c.baseline.method, c.baseline.trl.get("num_generations", 0), c.baseline.kl_coef,
                   c.baseline.trl["learning_rate"]) for c in countdown) == sorted(
        (method, group, kl, lr) for method, group in (("grpo", 30), ("grpo", 8), ("ppo", 0))
        for kl in (0.001, 0.005) for lr in (1e-6, 1e-5))
    assert all((c.task.name, c.task.max_new_tokens, c.es.population, c.es.generations) == ("countdown", 1024, 30, 500)
               for c in countdown)
    # Table 2: GRPO group 30, lr 5e-6, beta in {0} and 10 log-spaced values 0.01 ... 1.0, 4 seeds each
    betas = (0.0, 0.01, 0.0167, 0.0278, 0.0464, 0.0774, 0.1291, 0.2154, 0.3594, 0.5994, 1.0)
    assert len(conciseness) == 44
    assert sorted((c.baseline.kl_coef, c.seed) for c in conciseness) == [(b, s) for b in betas for s in range(4)]
    assert all((c.baseline.method, c.baseline.trl["num_generations"], c.baseline.trl["learning_rate"], c.task.name)
               == ("grpo", 30, 5e-6, "conciseness") for c in conciseness)


# ------------------------------------------------------------------------------------------------ reward
def test_reward_function_is_the_task_reward_on_text_cut_like_es():
    task = build_task("countdown", 3, 1, 0, {})
    rows = task.train_rows
    answers = [f"</think>\n<answer>{r['solution']}</answer>" for r in rows]
    completions = [answers[0] + "\nTRAILING", answers[1][:-3], "no tags"]  # text after the stop string is cut
    recorder = generation.RewardRecorder()
    reward = generation.make_reward_function(task, recorder)
    cols = {k: v for k, v in columns(rows).items() if k != "prompt"}
    got = reward([r["prompt"] for r in rows], completions, trainer_state=None, completion_ids=None, **cols)
    expected = score(task.reward, [cut_at_stop(c, task.stop_strings) for c in completions], rows)
    assert got == expected and got[0] == pytest.approx(1.1) and recorder.samples == 3
    assert [r["completion"] for r in recorder.take()[0]][0] == answers[0]


def test_trim_completion_matches_es_cutting():
    _, tok = build_tiny_model()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert generation.trim_completion(enc("ab") + [eos, 7, 8], tok, ["</a>"]) == enc("ab") + [eos]  # EOS kept
    assert generation.trim_completion(enc("ab</a>") + [pad, pad], tok, ["</a>"]) == enc("ab</a>")
    tok.pad_token = tok.eos_token  # SmolLM2's case: the pad written after a stop string is EOS
    assert generation.trim_completion(enc("ab</a>") + [eos, eos], tok, ["</a>"]) == enc("ab</a>")
    assert generation.trim_completion(enc("ab") + [eos, eos], tok, ["</a>"]) == enc("ab") + [eos]  # a real EOS


def test_generation_hook_stops_and_cuts_like_the_es_generator():
    """TRL calls model.generate(input_ids=..., generation_config=...) without a tokenizer; with the hook it stops
    at the task's stop strings, and the trimmed, cut text equals what ES's generator returns."""
    from transformers import GenerationConfig

    from es_repro.baselines.grpo import TaskGRPOTrainer
    from es_repro.engines.hf.generation import HFGenerator

    model, tok = build_tiny_model()
    tok.padding_side = "left"
    rows = build_task("synthetic", 4, 1, 0, {}).train_rows
    plain = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=12)
    generated = plain._generate_ids(plain.prompts(rows), False, 1.0, None)[1]
    stop = next(t for ids in generated for t in (tok.decode([i]) for i in ids[2:-1]) if t.isascii() and t.isprintable())
    es_texts = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=12, stop_strings=[stop]).generate(rows)

    texts = [r["prompt"] for r in rows]
    prompts = TaskGRPOTrainer._tokenize_prompts(type("T", (), {"processing_class": tok})(), texts)[0]
    assert prompts == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]  # no special tokens added
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    hook = generation.StopStringHook(model, tok, [stop])
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config)
    width = enc["input_ids"].shape[1]
    assert hook.prompt_width == width
    completions = [generation.trim_completion(row[width:].tolist(), tok, [stop]) for row in out]
    got = [cut_at_stop(tok.decode(c, skip_special_tokens=True), [stop]) for c in completions]
    assert got == es_texts
    assert any(t.endswith(stop) and len(c) < 12 for t, c in zip(got, completions))  # it stopped early somewhere
    hook.remove()
    assert "generate" not in model.__dict__


def test_ppo_reward_model_puts_the_task_reward_where_trl_reads_it():
    from trl.experimental.utils import get_reward

    task = build_task("synthetic", 3, 1, 0, {"target_char": "a"})
    _, tok = build_tiny_model()
    texts = [r["prompt"] for r in task.train_rows]
    ids = [generation.prompt_ids(tok, t) for t in texts]
    width = max(map(len, ids))
    hook = type("Hook", (), {"prompt_width": width})()
    recorder = generation.RewardRecorder()
    model = reward_model.TaskRewardModel(task, tok, task.train_rows, texts, ids, hook, recorder)
    responses = ["aaaa", "ab", "zzz"]
    pad = tok.pad_token_id
    rows = []
    for p, r in zip(ids, responses):
        resp = generation.prompt_ids(tok, r)
        rows.append([pad] * (width - len(p)) + p + resp + [pad] * (6 - len(resp)))  # left-padded prompt, right pad
    _, scores, _ = get_reward(model, torch.tensor(rows), pad, width)
    expected = task.reward(responses, target_char=["a"] * 3)
    assert scores.tolist() == pytest.approx(expected) and expected[0] == 1.0 and expected[2] < expected[1] < 1.0
    records, tokens = recorder.take()
    assert [r["completion"] for r in records] == responses and recorder.samples == 3 and tokens == 4 + 2 + 3


def test_ppo_pad_is_neither_eos_nor_in_prompts():
    from es_repro.baselines.ppo import choose_pad_id

    _, tok = build_tiny_model()
    tok.pad_token = tok.eos_token
    pad = choose_pad_id(tok, [[1, 2, 3]])
    assert pad != tok.eos_token_id and pad not in (1, 2, 3)


# ------------------------------------------------------------------------------------------------ runs
def _fail_on_call(monkeypatch, module, n: int) -> None:
    """Make the n-th training reward call raise, as a crash mid-run would."""
    real, calls = module.task_reward, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "task_reward", flaky)


def _check_shared_log(run_dir: Path, kind: str, per_step: int, steps: int) -> list[dict]:
    log = RunLog(run_dir)
    info = log.info()
    assert info["status"] == "finished" and info["kind"] == kind and info["launches"] == 2
    assert info["config"]["baseline"]["method"] == kind and "git_commit" in info
    train, evals = log.records("train"), log.records("eval")
    assert [r["step"] for r in train] == list(range(1, steps + 1))  # resumed: no step twice, none missing
    assert [r["samples"] for r in train] == [per_step * s for s in range(1, steps + 1)]
    assert all(isinstance(r["reward_mean"], float) for r in train)
    assert [r["step"] for r in evals] == [0, 2, 4, 5]  # every 16 samples (8 per step) and at the end
    for r in evals:
        assert {"eval_accuracy", "eval_reward", "eval_kl", "samples"} <= r.keys() and r["eval_kl"] is not None
    assert info["summary"]["samples"] == per_step * steps and info["summary"]["steps"] == steps
    return train


def _train_completions(run_dir: Path) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for r in read_jsonl(run_dir / "samples.jsonl"):
        if r["kind"] == "train":
            by_step.setdefault(r["step"], []).append(r)
    return by_step


def _assert_policy_changed(run_dir: Path, cfg) -> None:
    ckpt, step = session.latest_checkpoint(run_dir)
    assert step == 5
    trained = load_file(ckpt / "model.safetensors")
    base = dict(load_model(cfg.model)[0].named_parameters())
    assert any(not torch.equal(trained[n], base[n].detach()) for n in trained)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(ckpt).config.hidden_size == 32  # a plain HF directory


@pytest.mark.slow
def test_grpo_runs_logs_like_es_resumes_and_skips(tmp_path, monkeypatch, capsys):
    cfg = make_cfg(GRPO + ["baseline.trl.log_completions=true", "baseline.trl.num_completions_to_print=0"])
    _fail_on_call(monkeypatch, generation, 4)  # crash in step 4, after the step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_baseline(cfg, tmp_path)
    assert RunLog(tmp_path).info()["status"] == "failed" and session.latest_checkpoint(tmp_path)[1] == 3
    before = [r for r in RunLog(tmp_path).records() if r["step"] <= 3]
    monkeypatch.undo()
    run_baseline(cfg, tmp_path)
    assert "resuming at step 3" in capsys.readouterr().out
    train = _check_shared_log(tmp_path, "grpo", per_step=8, steps=5)
    assert [r for r in RunLog(tmp_path).records() if r["step"] <= 3] == before  # lines up to the checkpoint kept

    # TRL's own record of every step's completions and rewards: the task reward recomputed on them matches,
    # and so does the step's logged reward_mean.
    task = task_from_config(cfg.task)
    for line in train:
        table = pd.read_parquet(tmp_path / "checkpoints" / "completions" / f"completions_{line['step']:05d}.parquet")
        recomputed = task.reward([cut_at_stop(c, task.stop_strings) for c in table["completion"]],
                                 target_char=["a"] * len(table))
        assert table["synthetic_reward"].tolist() == pytest.approx(recomputed)
        assert line["reward_mean"] == pytest.approx(sum(recomputed) / len(recomputed))
        assert line["completions"] == 8 and line["tokens"] == round(8 * line["trl/completions/mean_length"])
    assert sorted(_train_completions(tmp_path)) == [1, 2, 3, 4, 5]
    _assert_policy_changed(tmp_path, cfg)
    run_baseline(cfg, tmp_path)
    assert "already finished; skipping" in capsys.readouterr().out


@pytest.mark.slow
def test_ppo_runs_logs_like_es_resumes_and_skips(tmp_path, monkeypatch, capsys):
    cfg = make_cfg(PPO)
    _fail_on_call(monkeypatch, reward_model, 4)
    with pytest.raises(KeyboardInterrupt):
        run_baseline(cfg, tmp_path)
    assert session.latest_checkpoint(tmp_path, markers=("trainer_state.json", "value_model.safetensors"))[1] == 3
    monkeypatch.undo()
    run_baseline(cfg, tmp_path)
    assert "resuming at step 3" in capsys.readouterr().out
    train = _check_shared_log(tmp_path, "ppo", per_step=8, steps=5)

    # PPO's recorded score of each step (objective/scores, read from the reward model where TRL reads it) equals
    # the task reward recomputed on the completions of that step.
    task = task_from_config(cfg.task)
    completions = _train_completions(tmp_path)
    for line in train:
        texts = [r["completion"] for r in completions[line["step"]]]
        recomputed = task.reward(texts, target_char=["a"] * len(texts))
        assert len(texts) == 8 and [r["reward"] for r in completions[line["step"]]] == pytest.approx(recomputed)
        assert line["reward_mean"] == pytest.approx(sum(recomputed) / len(recomputed), abs=1e-6)
        assert line["reward_mean"] == line["trl/objective/scores"]
    _assert_policy_changed(tmp_path, cfg)
    ckpt, _ = session.latest_checkpoint(tmp_path)
    value = load_file(ckpt / "value_model.safetensors")
    assert value["score.weight"].abs().sum() > 0  # the critic's head (zero at start) was trained too
    run_baseline(cfg, tmp_path)
    assert "already finished; skipping" in capsys.readouterr().out
    assert json.loads((tmp_path / "run.json").read_text())["launches"] == 2


@pytest.mark.parametrize("exp,budget,steps", [("repro_countdown_cpu", 512, 32), ("repro_conciseness_cpu", 192, 12)])
def test_cpu_reproduction_presets_give_every_method_the_same_budget(exp, budget, steps, tmp_path):
    """The committed reproduction (results/repro_*_cpu): ES, GRPO and PPO points compose, validate and get the
    same number of sample evaluations (ES: generations x N x prompts; RL: steps x completions per step)."""
    from es_repro.baselines.trl_config import build_args, completions_per_step, make_plan
    from es_repro.config import to_run_config
    from tests.helpers import compose_cfg

    for baseline in ("none", "grpo_cpu", "ppo_cpu"):
        cfg = to_run_config(compose_cfg([f"experiment={exp}", f"baseline={baseline}", "seed=2"]))
        task = task_from_config(cfg.task)
        es_budget = cfg.es.generations * cfg.es.population * len(task.train_rows)
        assert es_budget == budget and cfg.seed == 2 and cfg.task.max_new_tokens == 32
        if baseline == "none":
            continue
        plan = make_plan(cfg, len(task.train_rows), completions_per_step(cfg.baseline.method, build_args(cfg, tmp_path)))
        assert (plan.budget, plan.per_step, plan.steps) == (budget, 16, steps)
