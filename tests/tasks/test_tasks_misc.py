"""Conciseness and synthetic rewards against their definitions; prompt rendering and stop strings."""
from __future__ import annotations

import pytest

from es_repro.engines.hf.generation import cut_at_stop, render_prompt
from es_repro.models.tiny import build_tiny_tokenizer
from es_repro.tasks import TASKS, build_task, score
from es_repro.tasks.conciseness import display_reward


@pytest.mark.parametrize("completion, target, expected", [("8", "8", 0.0), ("8.", "8", -1.0), ("", "Paris", -5.0),
                                                           ("The answer is 8", "8", -14.0), ("x" * 3000, "No", -2998.0)])
def test_conciseness_reward_is_minus_length_gap(completion, target, expected):
    task = build_task("conciseness", 2, 8, 0)
    row = dict(task.train_rows[0], target=target)
    assert score(task.reward, [completion], [row]) == [expected]


def test_conciseness_prompts_and_display_value():
    task = build_task("conciseness", 2, 8, 0)
    assert [r["target"] for r in task.train_rows] == ["8", "No"]
    assert len(task.eval_rows) == 8 and task.eval_rows[0]["prompt"] == "What is the capital of France?"
    assert display_reward(0.0) == 1.0 and display_reward(-1000.0) == 0.5 and display_reward(-5000.0) == 0.0
    assert score(task.accuracy, ["Paris.", "84 is it"], task.eval_rows[:2]) == [1.0, 0.0]


def test_synthetic_reward_definition():
    task = build_task("synthetic", 1, 1, 0, {"target_char": "a"})
    row = task.train_rows[0]
    assert score(task.reward, ["aaa", "b", "", "ab"], [row] * 4) == pytest.approx([1.0, 1 - 1 / 255, 0.0, 1 - 0.5 / 255])


def test_registry_names():
    assert {"countdown", "conciseness", "synthetic"} <= set(TASKS)


def test_cut_at_stop_keeps_the_earliest_stop():
    assert cut_at_stop("a</answer> b</answer>", ["</answer>"]) == "a</answer>"
    assert cut_at_stop("no stop", ["</answer>"]) == "no stop"


def test_render_prompt_raw_and_chat():
    tok = build_tiny_tokenizer()
    task = build_task("countdown", 2, 2, 0)
    row = task.train_rows[0]
    assert render_prompt(row, tok, "raw") == row["prompt"] and row["prompt"].endswith("<think>")
    chat = render_prompt(row, tok, "chat")
    assert chat.startswith("<|system|>") and chat.endswith("<|assistant|>" + row["assistant_prefix"])
