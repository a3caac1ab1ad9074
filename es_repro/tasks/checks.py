"""task.* settings (config/checks.py); each task's own keywords (task.options) are checked by its builder."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.config.schema import PROMPT_FORMATS


def check(cfg) -> None:
    from es_repro.tasks import TASKS

    t = cfg.task
    one_of("task.name", t.name, tuple(sorted(TASKS)))
    one_of("task.prompt_format", t.prompt_format, PROMPT_FORMATS)
    positive("task.train_size", t.train_size)
    positive("task.eval_size", t.eval_size)
    positive("task.max_new_tokens", t.max_new_tokens)
    positive("task.max_prompt_tokens", t.max_prompt_tokens)
