"""The ES benchmark on the tiny model: its numbers follow their definitions, and --timed-members extrapolates
member phases while still applying (and timing) the full N-member update."""
from __future__ import annotations

import re
import sys

import pytest
import torch

from es_repro.bench import throughput as bench
from es_repro.engines.hf.backend import HFBackend, make_generator
from es_repro.engines.weights import ESWeights
from es_repro.es import strategy as es
from es_repro.es.noise import noise_mode
from es_repro.models.loading import load_model
from es_repro.tasks import task_from_config
from es_repro.tasks.base import score
from tests.helpers import make_cfg


def _setup(overrides=()):
    cfg = make_cfg(["task.train_size=3", "task.max_new_tokens=5", *overrides])
    task = task_from_config(cfg.task, eval_size=1)
    model, tokenizer = load_model(cfg.model)
    return cfg, task, HFBackend(model, tokenizer, make_generator(cfg, task, model, tokenizer), ESWeights(model, noise_mode(cfg.es)))


class KnownCostBackend:
    """Every member costs the same known seconds per phase on a fake clock (the Timer's), generates 7 tokens in
    one generate call of (batch 3, width 4, 5 steps) and scores 0.1 x its position; the update takes 3 s."""

    COSTS = {"perturb": 0.25, "generate": 2.0, "restore": 0.125, "reward": 0.5}

    def __init__(self, clock):
        from es_repro.models.tiny import build_tiny_model

        self.clock, self.model = clock, build_tiny_model(seed=0)[0]  # the model only gives the limit its shape
        self.calls, self.generated_tokens, self.updates = [], 0, []

    def fitness(self, members, sigma, rows, task, timer):
        for _ in members:
            for phase, seconds in self.COSTS.items():
                with timer(phase):
                    self.clock.now += seconds
            self.calls.append((3, 4, 5))
            self.generated_tokens += 7
        return [0.1 * (k + 1) for k in range(len(members))]

    def apply_update(self, update):
        self.clock.now += 3.0
        self.updates.append(update)


@pytest.mark.parametrize("timed", [0, 1, 2, 4])
def test_timed_members_extrapolate_known_costs_to_all_n_members(timed, monkeypatch):
    """With N=6 members that each cost the same, K timed members scaled by N/K give the numbers of all 6, worked
    out by hand from the definitions: 6 x (0.25 + 2 + 0.125 + 0.5) s of member phases, the 3 s update once, 6 x 7
    tokens, 6 x 5 decode steps; the rewards are the K timed members' and the update still covers all 6 seeds."""
    from types import SimpleNamespace

    from es_repro.bench.roofline import generation_limit_s, shape_of

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(sys.modules[bench.Timer.__module__], "time", SimpleNamespace(perf_counter=lambda: clock.now))
    cfg = make_cfg(["task.train_size=3"])
    task = task_from_config(cfg.task, eval_size=1)
    backend = KnownCostBackend(clock)
    assert cfg.es.population == 6
    r = bench.bench_generation(cfg, backend, task, timed_members=timed, limits=(1e9, 1e11))
    expected = {"generate_s": 12.0, "perturb_s": 1.5, "restore_s": 0.75, "reward_s": 3.0, "update_s": 3.0,
                "total_s": 20.25, "tokens": 42, "tok_per_s": 42 / 20.25, "gen_tok_per_s": 42 / 12.0,
                "overhead": 1 - 12.0 / 20.25, "ms_per_step": 1000 * 12.0 / 30}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, rel=1e-12), key
    k = timed or 6
    assert r["timed_members"] == k and len(backend.calls) == k
    assert r["reward_mean"] == pytest.approx(0.1 * (k + 1) / 2)
    limit = 6 * generation_limit_s(shape_of(backend.model), batch=3, width=4, steps=5, bytes_per_value=4,
                                   bandwidth=1e9, peak_flops=1e11)
    assert r["limit_s"] == pytest.approx(limit) and r["of_limit"] == pytest.approx(limit / 12.0)
    members = es.ask(cfg.seed, 0, 6, cfg.es.antithetic)
    (update,) = backend.updates
    assert {seed for seed, _ in update} == {m.seed for m in members}


def test_timed_members_still_apply_the_full_update():
    cfg, task, backend = _setup()
    weights = backend.weights
    before = [m.clone() for m in weights.master]
    r = bench.bench_generation(cfg, backend, task, timed_members=2)
    # Redo by hand: the two timed members' rewards, reused cyclically for all N members, one update.
    members = es.ask(cfg.seed, 0, cfg.es.population, cfg.es.antithetic)
    ref_model, ref_tokenizer = load_model(cfg.model)
    ref, ref_generator = ESWeights(ref_model, noise_mode(cfg.es)), make_generator(cfg, task, ref_model, ref_tokenizer)
    rewards = []
    for m in members[:2]:
        ref.perturb(m.seed, m.sign * cfg.es.sigma)
        rewards.append(sum(score(task.reward, ref_generator.generate(task.train_rows), task.train_rows)) / len(task.train_rows))
        ref.restore()
    all_rewards = [rewards[i % 2] for i in range(len(members))]
    ref.apply_update(es.merge_by_seed(members, es.tell(members, all_rewards, cfg.es.alpha, cfg.es.fitness)))
    assert r["reward_mean"] == pytest.approx(sum(rewards) / 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights.master))
    assert all(torch.equal(a, b) for a, b in zip(ref.master, weights.master))


@pytest.mark.slow
def test_inflight_processes_split_the_members_and_add_up_to_one_process_generation():
    """2 processes with their own model copies score members 0, 2 and 1, 3: the same completions (tokens) and
    rewards as one process scoring all 4; the phases are the slower process's."""
    cfg, task, backend = _setup()
    single = bench.bench_generation(cfg, backend, task)
    split = bench.bench_inflight(cfg, cfg.model.dtype, processes=2)
    assert split["tokens"] == single["tokens"] and split["reward_mean"] == pytest.approx(single["reward_mean"])
    assert split["processes"] == 2 and split["threads"] == max(1, torch.get_num_threads() // 2)
    assert split["total_s"] >= split["generate_s"] > 0 and 0 <= split["overhead"] < 1
    assert split["tok_per_s"] == pytest.approx(split["tokens"] / split["total_s"])
    with pytest.raises(SystemExit, match="inflight=3 needs at least as many timed members, got 2"):
        bench.bench_inflight(cfg, cfg.model.dtype, processes=3, timed_members=2)


def _printed_table(out: str) -> dict[str, dict[str, str]]:
    """The benchmark's printed table: {"<mode key>": {column: cell}}, keyed as the speed-up lines name a mode
    ("default@float32"; "inflight x2" as "inflight2@float32")."""
    lines = [line.strip().strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    header, *rows = [[cell.strip() for cell in line] for line in lines]
    table = {}
    for row in rows:
        cells = dict(zip(header, row))
        table[f"{cells['mode'].replace('inflight x', 'inflight')}@{cells['dtype']}"] = cells
    return table


@pytest.mark.slow
def test_bench_cli_prints_every_mode_and_the_speed_up(capsys):
    """A row per mode, and one speed-up line per mode over the paper loop that equals the ratio of the printed
    total_s cells (paper / mode: time per generation), within the rounding of the printed digits (3 for seconds,
    2 for the speed-up); a speed-up computed from anything else, or inverted, does not fit."""
    bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "4", "--prompts", "2",
                "--max-new-tokens", "4", "--members-per-forward", "2", "--timed-members", "2",
                "--modes", "paper@float32,default@float32,lowrank@bfloat16,inflight@float32", "--inflight", "2"])
    out = capsys.readouterr().out
    assert "| paper | float32 |" in out and "| default | float32 |" in out and "| lowrank | bfloat16 |" in out
    assert "| inflight x2 | float32 |" in out
    table = _printed_table(out)
    assert sorted(table) == ["default@float32", "inflight2@float32", "lowrank@bfloat16", "paper@float32"]
    speed_ups = re.findall(r"^speed-up of (\S+) over (\S+): (\d+\.\d\d)x per generation$", out, re.MULTILINE)
    assert sorted(mode for mode, _, _ in speed_ups) == ["default@float32", "inflight2@float32", "lowrank@bfloat16"]
    assert {ref for _, ref, _ in speed_ups} == {"paper@float32"}
    for mode, ref, printed in speed_ups:
        paper, other = float(table[ref]["total_s"]), float(table[mode]["total_s"])
        assert paper > 0, table[ref]
        # every printed number is within half its last digit of the true one
        lowest = (paper - 5e-4) / (other + 5e-4)
        highest = (paper + 5e-4) / (other - 5e-4) if other > 5e-4 else float("inf")
        assert lowest - 5e-3 <= float(printed) <= highest + 5e-3, (mode, printed, paper, other)


def test_bench_rejects_bad_modes_and_member_counts():
    with pytest.raises(SystemExit, match="not one of"):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--modes", "fast"])
    with pytest.raises(SystemExit, match="timed-members"):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "4", "--timed-members", "3",
                    "--members-per-forward", "2", "--modes", "lowrank"])


def test_generation_limit_against_hand_computed_numbers():
    from es_repro.bench.roofline import Shape, generation_limit_s

    shape = Shape(matmul_weights=1000, layers=2, heads=2, kv_heads=1, head_dim=4)
    # weights 2000 B -> 2 s at 1000 B/s; prefill FLOPs 2*1000*2*3 + (2*2*2*2*4)*2*3*4/2 = 12768;
    # decode t=1 (c=4): 2000 + (2*2*1*4*2)*4*2 = 2256 B, 4000 + 64*4*2 = 4512 FLOPs; t=2 (c=5): 2320 B, 4640 FLOPs.
    kw = dict(batch=2, width=3, steps=3, bytes_per_value=2)
    assert generation_limit_s(shape, **kw, bandwidth=1000, peak_flops=1e4) == pytest.approx(2 + 2.256 + 2.32)
    assert generation_limit_s(shape, **kw, bandwidth=1000, peak_flops=1e3) == pytest.approx(12.768 + 4.512 + 4.64)


def test_shape_counts_matmul_weights_and_published_parameter_counts():
    from es_repro.bench.roofline import device_limits, shape_of
    from es_repro.models.shapes import build_random_shape
    from es_repro.models.tiny import build_tiny_model

    untied, _ = build_tiny_model(seed=0)
    total = sum(p.numel() for p in untied.parameters())
    assert shape_of(untied).matmul_weights == total - untied.get_input_embeddings().weight.numel()
    tied, _ = build_tiny_model(seed=0, tie_embeddings=True)
    assert shape_of(tied).matmul_weights == sum(p.numel() for p in tied.parameters())
    # Qwen2.5-1.5B-Instruct: 1,543,714,304 parameters (its model card: 1.54B), tied head; built on the meta device.
    qwen, _ = build_random_shape("qwen2.5-1.5b", dtype=torch.bfloat16, device=torch.device("meta"))
    s = shape_of(qwen)
    assert s.matmul_weights == 1_543_714_304 and (s.layers, s.heads, s.kv_heads, s.head_dim) == (28, 12, 2, 128)
    assert device_limits("NVIDIA H200", None, None) == (4.8e12, 989e12)
    # the most specific key wins: an H100 NVL streams faster than the SXM part, and a bound must not exceed it
    assert device_limits("NVIDIA H100 NVL", None, None)[0] == 3.9e12
    assert device_limits("NVIDIA H100 80GB HBM3", None, None)[0] == 3.35e12
    assert device_limits("NVIDIA GH200 480GB", None, None)[0] == 4.9e12
    assert device_limits("cpu", 10, 1) == (10e9, 1e12) and device_limits(None, None, None) is None


def test_bench_limit_column_and_forced_tokens():
    from es_repro.bench.roofline import generation_limit_s, shape_of

    cfg, task, _ = _setup(["task.max_new_tokens=6"])
    backend = bench.setup(cfg, task, "default", "float32", force_tokens=True)
    r = bench.bench_generation(cfg, backend, task, limits=(1e9, 1e11))
    assert r["tokens"] == cfg.es.population * len(task.train_rows) * 6  # every sequence ran the full budget
    calls = backend.generator.calls
    assert len(calls) == cfg.es.population and all(b == 3 and t == 6 for b, _, t in calls)
    expected = sum(generation_limit_s(shape_of(backend.model), batch=b, width=w, steps=t, bytes_per_value=4,
                                      bandwidth=1e9, peak_flops=1e11) for b, w, t in calls)
    assert r["limit_s"] == pytest.approx(expected) and r["of_limit"] == pytest.approx(expected / r["generate_s"])
    assert r["ms_per_step"] == pytest.approx(1000 * r["generate_s"] / sum(t for _, _, t in calls))


def test_bench_cli_cuts_prompts_and_prints_the_limit_column(capsys, monkeypatch):
    """--prompts 2 --prompt-tokens 5: every generate call the benchmark makes (the warm-up, then one per member)
    sees 2 prompts (1 in the warm-up) of exactly 5 tokens, and the row counts 2 members x 2 prompts x 3 tokens."""
    backends, real_setup = [], bench.setup

    def kept_setup(*args, **kwargs):
        backends.append(real_setup(*args, **kwargs))
        return backends[-1]

    monkeypatch.setattr(bench, "setup", kept_setup)
    bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "2", "--prompts", "2",
                "--max-new-tokens", "3", "--prompt-tokens", "5", "--force-tokens", "--modes", "default@float32",
                "--mem-bandwidth-gbs", "10", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    assert "| default | float32 |" in out and "limits: 10 GB/s, 1 TFLOP/s" in out and "of_limit" in out
    (backend,) = backends
    assert backend.generator.calls == [(1, 5, 2), (2, 5, 3), (2, 5, 3)]  # (prompts, prompt tokens, new tokens)
    header, row = (line.split(" | ") for line in out.splitlines() if line.startswith(("| mode |", "| default |")))
    assert row[header.index("tokens")] == "12"


def test_the_compiled_mode_is_the_default_path_with_a_static_cache_and_compiled_decode():
    # its outputs (== eager) are tests/engines/test_generation_settings.py's; compiling again here would only cost time
    cfg, task, _ = _setup()
    gen = bench.setup(cfg, task, "compiled", "float32").generator
    assert (gen.cache, gen.compile) == ("static", "on") and gen.stop_strings == tuple(task.stop_strings)


def test_prompts_are_cut_to_the_given_token_count():
    cfg, task, backend = _setup()
    cut = bench.cut_prompts(task, backend.tokenizer, 5)
    assert [len(backend.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in cut.train_rows] == [5] * 3


def test_bench_measures_the_bandwidth_before_each_row(capsys, monkeypatch):
    """--mem-bandwidth-gbs measure: each row's limits are built from the bandwidth measured just before it (shown in
    its bw_GBs column) and the given peak."""
    from es_repro.bench import roofline

    measured, seen, real_bench = iter([10e9, 20e9]), [], bench.bench_generation
    monkeypatch.setattr(roofline, "measured_read_bandwidth", lambda: next(measured))

    def kept_limits(*args, limits, **kwargs):
        seen.append(limits)
        return real_bench(*args, limits=limits, **kwargs)

    monkeypatch.setattr(bench, "bench_generation", kept_limits)
    bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "2", "--prompts", "2",
                "--max-new-tokens", "3", "--force-tokens", "--modes", "default@float32,default@float32",
                "--mem-bandwidth-gbs", "measure", "--peak-tflops", "3"])
    out = capsys.readouterr().out
    header, *rows = (line.split(" | ") for line in out.splitlines() if line.startswith(("| mode |", "| default |")))
    assert seen == [(10e9, 3e12), (20e9, 3e12)]
    assert [row[header.index("bw_GBs")] for row in rows] == ["10.000", "20.000"]
    with pytest.raises(SystemExit):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--mem-bandwidth-gbs", "fast"])
    with pytest.raises(SystemExit, match="--peak-tflops"):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--mem-bandwidth-gbs", "measure"])
