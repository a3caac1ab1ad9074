"""Bounded input: every prompt of a task fits task.max_prompt_tokens, checked before any generation.

Counting is cheap first: a prompt of at most ``limit`` UTF-8 bytes has at most ``limit`` tokens (a token covers at
least one byte), and one of more than CHARS_PER_TOKEN_BOUND * limit characters is refused without tokenizing
(a 10 MB row would otherwise cost a minute of tokenizing and gigabytes of attention). Only the prompts in between
are tokenized, by the backend's own tokenizer.
"""
from __future__ import annotations

from es_repro.util.errors import DataError

CHARS_PER_TOKEN_BOUND = 64


def check_prompt_lengths(task, backend, cfg) -> None:
    """Every prompt fits cfg.task.max_prompt_tokens; else a DataError naming the data file (or the generated task),
    the split and the row index."""
    limit = cfg.task.max_prompt_tokens
    source = str(cfg.task.options.get("data_path") or f"task {cfg.task.name}")
    for split, rows in (("train", task.train_rows), ("eval", task.eval_rows)):
        texts = backend.prompts(rows)
        for i, text in enumerate(texts):
            if len(text.encode("utf-8", errors="replace")) <= limit:
                continue
            if len(text) > CHARS_PER_TOKEN_BOUND * limit:
                size = f"{len(text):,} characters"
            else:
                n = backend.count_tokens([text])[0]
                if n <= limit:
                    continue
                size = f"{n:,} tokens"
            raise DataError(f"{source}: {split} row {i}: the prompt is {size}, more than task.max_prompt_tokens={limit} "
                            f"(raise it, or drop the row)")
