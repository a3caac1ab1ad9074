"""The shared evaluator: k3 KL against its definition, zero against itself, accuracy and reward."""
from __future__ import annotations

import math

import pytest
import torch

from es_repro.engines.hf import generation
from es_repro.engines.hf.backend import HFBackend
from es_repro.engines.hf.generation import HFGenerator, batch_token_logprobs, token_logprobs
from es_repro.engines.weights import ESWeights
from es_repro.models.tiny import build_tiny_model
from es_repro.run.evaluate import evaluate, k3_per_token, kl_to_base
from es_repro.run.log import SAMPLES_FILE, RunLog, read_jsonl
from es_repro.tasks import build_task


def test_k3_matches_definition():
    lp_ft = torch.tensor([math.log(0.5), math.log(0.2)])
    lp_base = torch.tensor([math.log(0.25), math.log(0.4)])
    r = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(k3_per_token(lp_ft, lp_base), r - torch.log(r) - 1)
    assert float(k3_per_token(lp_ft, lp_ft).abs().max()) == 0.0


def test_token_logprobs_match_a_manual_forward():
    model, _ = build_tiny_model(seed=4)
    prompt, completion = [10, 20, 30], [40, 50]
    lp = token_logprobs(model, prompt, completion)
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
    manual = [torch.log_softmax(logits[2], -1)[40], torch.log_softmax(logits[3], -1)[50]]
    torch.testing.assert_close(lp, torch.stack(manual))


@pytest.mark.parametrize("budget_rows", [1, 3, 100])
def test_batched_logprobs_equal_one_forward_per_pair(budget_rows, monkeypatch):
    """Right-padded batches (sorted by length, split by the logits budget) score each pair as its own forward."""
    model, _ = build_tiny_model(seed=4)
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 250, (n,), generator=gen).tolist(), torch.randint(0, 250, (m,), generator=gen).tolist())
             for n, m in [(5, 3), (2, 9), (7, 1), (3, 4), (9, 6)]]
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(generation, "LOGIT_BYTES_PER_BATCH", budget_rows * 15 * vocab * 4)
    forwards = []
    model.register_forward_hook(lambda mod, args, kwargs, out: forwards.append(kwargs["input_ids"].shape), with_kwargs=True)
    batched = batch_token_logprobs(model, pairs)
    assert len(forwards) == {1: 5, 3: 2, 100: 1}[budget_rows]  # rows of at most 15 tokens: budget_rows per forward
    for (p, c), lp in zip(pairs, batched):
        torch.testing.assert_close(lp, token_logprobs(model, p, c), rtol=1e-5, atol=1e-5)


def _backend(model, tok, task, base):
    tok.padding_side = "left"
    gen = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=6, stop_strings=task.stop_strings, batch_size=4)
    return HFBackend(model, tok, gen, ESWeights(model, "iid"), reference=lambda: base)


def test_kl_zero_against_itself_positive_after_perturbation():
    task = build_task("synthetic", 2, 4, 0)
    model, tok = build_tiny_model(seed=0)
    base, _ = build_tiny_model(seed=0)
    backend = _backend(model, tok, task, base)
    pairs = backend.sample_ids(task.eval_rows, temperature=1.0, seed=0)
    assert sum(len(c) for _, c in pairs) > 0
    assert kl_to_base(backend, pairs) == 0.0
    backend.weights.perturb(1, 0.2)
    kl = kl_to_base(backend, pairs)
    # the definition, token by token, against the two models directly
    k3 = [k3_per_token(token_logprobs(model, p, c), token_logprobs(base, p, c)) for p, c in pairs if c]
    assert kl > 0.0 and kl == pytest.approx(float(sum(k.sum() for k in k3)) / sum(len(k) for k in k3), rel=1e-6)


def test_sampling_for_kl_is_seeded_and_leaves_the_global_stream_alone():
    task = build_task("synthetic", 2, 4, 0)
    model, tok = build_tiny_model(seed=0)
    backend = _backend(model, tok, task, None)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = backend.sample_ids(task.eval_rows, temperature=1.0, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a == backend.sample_ids(task.eval_rows, temperature=1.0, seed=5)
    # the seed, not the global stream it leaves alone, decides the samples: another seed, other samples
    assert [c for _, c in a] != [c for _, c in backend.sample_ids(task.eval_rows, temperature=1.0, seed=6)]


def test_evaluate_reports_task_accuracy_and_reward():
    task = build_task("synthetic", 2, 4, 0)
    model, tok = build_tiny_model(seed=0)
    base, _ = build_tiny_model(seed=0)
    result = evaluate(task, _backend(model, tok, task, base), kl_samples=2, kl_prompts=2, samples_to_log=4)
    completions = [s["completion"] for s in result.samples]
    metrics = result.metrics()
    assert metrics["eval_n"] == 4 and len(completions) == 4
    assert metrics["eval_kl"] == pytest.approx(0.0, abs=1e-6)
    recomputed = task.reward(completions, target_char=["a"] * len(completions))
    assert [s["reward"] for s in result.samples] == recomputed
    assert metrics["eval_reward"] == pytest.approx(sum(recomputed) / 4)
    assert metrics["eval_accuracy"] == sum(task.accuracy(completions, target_char=["a"] * 4)) / 4


def test_a_metric_added_to_the_registry_reaches_the_eval_line(tmp_path, monkeypatch):
    """METRICS is the one list of what an eval line holds: an entry added there is logged without other edits."""
    from es_repro.run import evaluate as evaluate_module
    from es_repro.train import run_es
    from tests.helpers import make_cfg

    monkeypatch.setitem(evaluate_module.METRICS, "eval_reward_max", lambda r: max(r.rewards))
    run_es(make_cfg(["es.generations=1", "eval.every=1", "eval.kl_samples=0"]), tmp_path)
    evals = RunLog(tmp_path).records("eval")
    samples = [s for s in read_jsonl(tmp_path / SAMPLES_FILE) if s["step"] == evals[-1]["step"]]
    assert len(evals) == 2 and all("eval_reward_max" in e for e in evals)
    assert evals[-1]["eval_reward_max"] >= max(s["reward"] for s in samples)  # the samples are a subset of the rows


def test_base_model_not_kept_is_loaded_per_kl_evaluation_with_the_same_kl():
    task = build_task("synthetic", 2, 4, 0)
    loads = []

    def load_base():
        loads.append(1)
        return build_tiny_model(seed=0)[0]

    model, tok = build_tiny_model(seed=0)
    backend = _backend(model, tok, task, None)
    backend._reference_loader = load_base
    backend.weights.perturb(1, 0.2)
    pairs = backend.sample_ids(task.eval_rows, temperature=1.0, seed=0)
    kept = [kl_to_base(backend, pairs) for _ in range(2)]
    assert len(loads) == 1  # kept: loaded once
    backend.keep_reference, backend._reference = False, None
    freed = [kl_to_base(backend, pairs) for _ in range(2)]
    assert len(loads) == 3 and backend._reference is None  # loaded for each evaluation, freed after it
    assert kept == freed and kept[0] > 0


def test_master_on_cpu_is_the_same_master_and_other_devices_are_refused():
    from es_repro.config import ConfigError, validate
    from tests.helpers import make_cfg

    model, _ = build_tiny_model(seed=0)
    a, b = ESWeights(model, "iid"), ESWeights(build_tiny_model(seed=0)[0], "iid", master_device="cpu")
    for w in (a, b):
        w.apply_update([(3, 0.01), (4, -0.02)])
    assert all(torch.equal(x, y) for x, y in zip(a.master, b.master))
    with pytest.raises(ValueError, match="es.master_device"):
        ESWeights(build_tiny_model(seed=0)[0], "iid", master_device="cuda")
    with pytest.raises(ConfigError, match="es.master_device"):
        validate(make_cfg(["es.master_device=gpu"]))
