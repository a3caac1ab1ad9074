"""The shared evaluator: k3 KL against its definition, zero against itself, accuracy and reward."""
from __future__ import annotations

import math

import pytest
import torch

from es_repro.backends import HFGenerator
from es_repro.evaluate import evaluate, k3_per_token, kl_to_base, token_logprobs
from es_repro.tasks import build_task
from es_repro.tiny_model import build_tiny_model
from es_repro.weights import ESWeights


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


def _generator(model, tok, task):
    tok.padding_side = "left"
    return HFGenerator(model, tok, prompt_format="raw", max_new_tokens=6, stop_strings=task.stop_strings, batch_size=4)


def test_kl_zero_against_itself_positive_after_perturbation():
    task = build_task("synthetic", 2, 4, 0)
    model, tok = build_tiny_model(seed=0)
    base, _ = build_tiny_model(seed=0)
    gen = _generator(model, tok, task)
    torch.manual_seed(0)
    pairs = gen.generate_ids(task.eval_rows, temperature=1.0)
    assert sum(len(c) for _, c in pairs) > 0
    assert kl_to_base(pairs, model, base) == 0.0
    ESWeights(model, "iid").perturb(1, 0.2)
    assert kl_to_base(pairs, model, base) > 0.0


def test_evaluate_reports_task_accuracy_and_reward():
    task = build_task("synthetic", 2, 4, 0)
    model, tok = build_tiny_model(seed=0)
    base, _ = build_tiny_model(seed=0)
    result = evaluate(task, _generator(model, tok, task), base_model=base, kl_samples=2, kl_prompts=2, samples_to_log=4)
    completions = [s["completion"] for s in result.samples]
    assert result.n == 4 and len(completions) == 4
    assert result.kl == pytest.approx(0.0, abs=1e-6)
    recomputed = task.reward(completions, target_char=["a"] * len(completions))
    assert [s["reward"] for s in result.samples] == recomputed
    assert result.reward == pytest.approx(sum(recomputed) / 4)
    assert result.accuracy == sum(task.accuracy(completions, target_char=["a"] * 4)) / 4
