"""Where a decode step of the main job goes (issue 34): the torch profiler's self CPU time per kind of op.

    .venv/bin/python scripts/profile_decode_step.py bfloat16 [KEY=VALUE ...]     # or float32
    .venv/bin/python scripts/profile_decode_step.py float32 generation.fast_decode=off

The run is `experiment=quickstart` (SmolLM2-135M, 2 prompts, 32 new tokens, forced: the benchmark's --force-tokens)
on the path its config picks, warmed up once. One generate call is timed without the profiler (the "a step" row),
then profiled; each aten op's self time is charged to a kind, and what no op accounts for (Python, dispatch, the
profiler's own cost) is the "rest" row, scaled so the rows add up to the unprofiled step.
"""
import sys
import time
from collections import defaultdict

from torch.profiler import ProfilerActivity, profile

from es_repro.config.load import compose, to_run_config
from es_repro.engines.base import build_backend
from es_repro.tasks import task_from_config

KINDS = (  # (kind, op names containing any of these), first match wins
    ("linears (matmuls, the LM head included)", ("linear", "addmm", "aten::mm", "aten::bmm", "matmul")),
    ("attention core (SDPA)", ("scaled_dot_product", "flash_attention", "softmax")),
    ("KV cache (writes, cat)", ("copy_", "aten::cat", "index_put", "index_copy")),
    ("norms", ("rms_norm", "aten::pow", "aten::mean", "aten::rsqrt")),
    ("elementwise (RoPE, SiLU, residuals, masks)", ("aten::mul", "aten::add", "aten::neg", "silu", "aten::sub", "aten::div",
                                                    "aten::where", "aten::bitwise", "aten::__", "aten::masked_fill",
                                                    "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::cos", "aten::sin")),
    ("sampling (argmax, penalty, stop checks)", ("argmax", "gather", "scatter", "isin", "aten::all", "aten::any", "aten::max")),
    ("embedding", ("embedding", "index_select")),
)


def kind_of(op: str) -> str:
    for kind, keys in KINDS:
        if any(k in op for k in keys):
            return kind
    return "other ops (views, allocation, conversions)"


dtype, overrides = sys.argv[1], sys.argv[2:]
cfg = to_run_config(compose(["experiment=quickstart", f"model.dtype={dtype}", *overrides]))
task = task_from_config(cfg.task)
backend = build_backend(cfg, task)
gen = backend.generator
gen.stop_strings, gen.min_new_tokens = (), cfg.task.max_new_tokens
rows = task.train_rows
gen.generate(rows)  # warm-up (and the packs, when the weights are packed)
calls0 = len(gen.calls)
t0 = time.perf_counter()
gen.generate(rows)
wall = time.perf_counter() - t0
steps = sum(t for _, _, t in gen.calls[calls0:])
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    gen.generate(rows)
    profiled = time.perf_counter() - t0
acc = defaultdict(float)
for event in prof.key_averages():
    acc[kind_of(event.key)] += event.self_cpu_time_total / 1e6
ops = sum(acc.values())
acc["rest: Python, dispatch, profiler (scaled)"] = max(profiled - ops, 0.0)
scale = wall / profiled  # the profiler's overhead lands in the rest row; rescale all rows to the unprofiled step
decoder = backend.describe().get("greedy_decoder", "hf generate")
print(f"{dtype}, {decoder}: {steps} forward passes (prefill + decode) of batch {len(rows)}, "
      f"{1000 * wall / steps:.1f} ms per step unprofiled ({1000 * profiled / steps:.1f} profiled)")
print("| where | ms per step | share |")
print("|---|---|---|")
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"| {k} | {1000 * v * scale / steps:.2f} | {v / profiled:.0%} |")
top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
print("top ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / steps:.2f} ms ({e.count // steps}/step)" for e in top))
