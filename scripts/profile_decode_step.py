"""Where a decode step of the main job goes (issue 34): self time per kind of module, from forward hooks.

    .venv/bin/python scripts/profile_decode_step.py bfloat16      # or float32

The run is `experiment=quickstart` (SmolLM2-135M, 2 prompts, 32 new tokens, forced) on its default path, warmed up
once. Each module's wall time less its children's is charged to its kind; what the model's forward does outside its
submodules, and what generate does outside the model, are rows of their own. The hooks cost about 1-2 ms a step;
compare rows, not the total, with the benchmark (python -m es_repro.bench).
"""
import sys
import time
from collections import defaultdict

from torch import nn

from es_repro.config.load import compose, to_run_config
from es_repro.engines.base import build_backend
from es_repro.tasks import task_from_config

dtype = sys.argv[1]
cfg = to_run_config(compose(["experiment=quickstart", f"model.dtype={dtype}"]))
task = task_from_config(cfg.task)
backend = build_backend(cfg, task)
gen = backend.generator
gen.stop_strings, gen.min_new_tokens = (), 32  # every step runs: the benchmark's --force-tokens
rows = task.train_rows
model = backend.model




def kind(name: str, mod: nn.Module) -> str:
    cls = type(mod).__name__
    if name == "lm_head":
        return "LM head (linear, whole vocabulary)"
    if isinstance(mod, nn.Linear) or "Linear" in cls:  # the packed bf16 linears too
        return "linears (q, k, v, o, gate, up, down)"
    if "Norm" in cls:
        return "norms"
    if "Attention" in cls:
        return "attention (core, RoPE apply, KV-cache update)"
    if "MLP" in cls:
        return "MLP glue (SiLU, multiply)"
    if "Rotary" in cls:
        return "rotary cos/sin"
    if isinstance(mod, nn.Embedding):
        return "embedding"
    if "DecoderLayer" in cls:
        return "decoder layer glue (residual adds)"
    return "model glue (masks, positions)"


acc, stack = defaultdict(float), []  # seconds per kind; open modules: [kind, start, children's seconds]


def opened(name: str, mod: nn.Module):
    def hook(module, args):
        stack.append([kind(name, mod), time.perf_counter(), 0.0])
    return hook


def closed(module, args, output):
    what, start, children = stack.pop()
    elapsed = time.perf_counter() - start
    acc[what] += elapsed - children
    if stack:
        stack[-1][2] += elapsed


for name, mod in model.named_modules():
    if name:
        mod.register_forward_pre_hook(opened(name, mod))
        mod.register_forward_hook(closed)
forward = {"seconds": 0.0}
model.register_forward_pre_hook(lambda m, a: forward.__setitem__("start", time.perf_counter()))
model.register_forward_hook(lambda m, a, o: forward.__setitem__(
    "seconds", forward["seconds"] + time.perf_counter() - forward["start"]))
gen.generate(rows)  # warm-up
acc.clear()
forward["seconds"], calls0 = 0.0, len(gen.calls)
t0 = time.perf_counter()
gen.generate(rows)
total = time.perf_counter() - t0
steps = sum(t for _, _, t in gen.calls[calls0:])
inner = sum(acc.values())
acc["model forward outside submodules"] = forward["seconds"] - inner
acc["generate loop outside the model (sampling, stopping, cache objects, Python)"] = total - forward["seconds"]
print(f"{dtype}: {steps} forward passes (prefill + decode) of batch {len(rows)}, {1000 * total / steps:.1f} ms per step")
print("| where | ms per step | share |")
print("|---|---|---|")
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"| {k} | {1000 * v / steps:.2f} | {v / total:.0%} |")
