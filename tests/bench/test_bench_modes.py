"""Each benchmark mode times what a run runs: the backend it builds is the one ``python -m es_repro`` builds with
the settings the mode names (same engine class, same weights class, same settings), because both go through the
engines' build (es_repro/bench/throughput.py mode_config)."""
from __future__ import annotations

import pytest

from es_repro.bench import throughput as bench
from es_repro.engines.base import build_backend
from es_repro.tasks import task_from_config
from tests.helpers import make_cfg

# mode -> the run's overrides that name the same engine
RUNS = {"default": [], "compiled": ["generation.cache=static", "generation.compile=on"],
        "lowrank": ["es.lowrank=2"]}


def settings_of(backend) -> dict:
    """What decides how a backend generates and moves its weights."""
    weights = backend.weights
    return {"backend": type(backend), "weights": type(weights), "describe": backend.describe(),
            "rule": (type(weights.rule), vars(weights.rule)) if hasattr(weights, "rule") else None,
            "rank": getattr(weights, "rank", None), "members_per_forward": getattr(backend, "members_per_forward", None),
            "reuse_pair_noise": getattr(backend, "reuse_pair_noise", None),
            "keep_for_update": getattr(weights, "keep_for_update", None), "keep_reference": backend.keep_reference,
            "batch_size": backend.generator.batch_size, "max_new_tokens": backend.generator.max_new_tokens}


@pytest.mark.parametrize("mode", sorted(RUNS))
def test_a_bench_mode_builds_the_engine_of_the_run_it_names(mode):
    cfg = make_cfg(["es.update=momentum", "es.momentum=0.8"])  # settings a hand-built engine would drop
    task = task_from_config(cfg.task)
    timed = bench.setup(cfg, task, mode, "float32", args_rank=2)
    run = build_backend(make_cfg(["es.update=momentum", "es.momentum=0.8", "model.dtype=float32", *RUNS[mode]]), task)
    assert settings_of(timed) == settings_of(run)
    assert settings_of(timed)["rule"][1]["beta"] == 0.8


def test_the_comparison_sees_a_different_engine():
    cfg = make_cfg()
    task = task_from_config(cfg.task)
    default, lowrank = bench.setup(cfg, task, "default", "float32"), bench.setup(cfg, task, "lowrank", "float32")
    assert settings_of(default) != settings_of(lowrank)
