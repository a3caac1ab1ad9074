"""The memory plan of a run, per GPU, computed from the config before anything loads (python -m es_repro.plan).

Every term is an upper estimate at the configured limits (batch, task.max_prompt_tokens, task.max_new_tokens),
in bytes per GPU of one process's device group:
- weights: the model in its dtype (vLLM: one tensor-parallel shard per GPU, inside the engine's share);
- master: the fp32 copy ES updates (es.master_device=cpu: pinned host memory of exactly its size instead, see
  es_repro/engines/weights.py pinned_empty; every vLLM worker holds a whole one, tensor parallel or not);
- pair noise: an antithetic pair's noise held between its two members (es.reuse_pair_noise, HF backend);
- update rule state: momentum's velocity and es.decay's base copy, fp32, where the master is;
- update/perturb buffers: the largest tensor's noise, its fp32 delta and their temporaries;
- KV cache and activations of one generate call (HF backend, generation.batch_size rows, or with es.lowrank every
  prompt once per member in the forward; vLLM's live inside its share);
- the engine's share: generation.vllm.gpu_memory_utilization / (engines sharing the GPU) of the card; for the
  population engine (es.lowrank on vLLM) it must also hold the LoRA slots and the KV cache of one wave in flight;
- evaluation copies: the base model for KL, loaded per evaluation with eval.keep_base_model=false (HF engines;
  vLLM scores KL in its engine, the base weights waiting in host memory), and the KL forward's logits;
- the CUDA context and allocator slack.
es.master_device=auto puts the master beside the model when that fits and in pinned host memory when only that
fits (resolve_master_device); a run that fits neither way is refused in one line naming the levers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from es_repro.engines.base import MemoryRow, engine_class, engine_name
from es_repro.models.shapes import SHAPES
from es_repro.util.errors import ConfigError

GIB = 1 << 30
CONTEXT_BYTES = int(1.5 * GIB)  # CUDA context, cuBLAS workspaces, allocator fragmentation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int = 0
    attention_bias: bool = False  # Qwen2: q/k/v biases

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def tensor_sizes(self) -> list[int]:
        """Elements of each unique parameter of a Llama/Qwen2-style decoder (a tied head counted once; Qwen2's q/k/v
        biases)."""
        q, kv = self.heads * self.dim, self.kv_heads * self.dim
        layer = [self.hidden * q, self.hidden * kv, self.hidden * kv, q * self.hidden,
                 *[self.hidden * self.intermediate] * 3, self.hidden, self.hidden]
        layer += [q, kv, kv] if self.attention_bias else []
        head = [] if self.tied else [self.vocab * self.hidden]
        return [self.vocab * self.hidden, *layer * self.layers, self.hidden, *head]

    @property
    def params(self) -> int:
        return sum(self.tensor_sizes())

    @property
    def largest_tensor(self) -> int:
        return max(self.tensor_sizes())

    @property
    def projection_rows_and_cols(self) -> int:
        """Sum of rows + columns of every attention and MLP projection (q, k, v, o, gate, up, down): a rank-1 LoRA
        adapter on them has this many values (es.lowrank_targets=projections)."""
        q, kv, h, i = self.heads * self.dim, self.kv_heads * self.dim, self.hidden, self.intermediate
        return self.layers * (2 * q + 2 * kv + 3 * i + 7 * h)

    def kv_bytes_per_token(self, value_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.dim * value_bytes


def shape_of_config(config: dict) -> ModelShape:
    return ModelShape(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                      layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                      kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                      vocab=config["vocab_size"], tied=bool(config.get("tie_word_embeddings", False)),
                      head_dim=config.get("head_dim") or 0,
                      attention_bias=bool(config.get("attention_bias", config.get("arch", config.get("model_type")) == "qwen2")))


def model_shape(model_cfg) -> ModelShape | None:
    """The shape of the configured model without loading it: a paper model by its name (qwen2.5-7b-instruct ->
    SHAPES["qwen2.5-7b"]), a random_shape by its path, or a local directory's config.json; None if unknown."""
    if model_cfg.source == "random_shape" and model_cfg.path in SHAPES:
        return shape_of_config(SHAPES[model_cfg.path])
    key = model_cfg.name.removesuffix("-instruct")
    if key in SHAPES:
        return shape_of_config(SHAPES[key])
    config = Path(model_cfg.path) / "config.json" if model_cfg.path else None
    if config is not None and config.is_file():
        return shape_of_config(json.loads(config.read_text()))
    return None


@dataclass
class Plan:
    gpu_bytes: int
    rows: list[MemoryRow] = field(default_factory=list)  # (term, bytes per GPU, note)
    host: list[MemoryRow] = field(default_factory=list)  # host memory of one process: (term, bytes, note)
    problems: list[str] = field(default_factory=list)  # what cannot work whatever the total (vLLM's share)
    master: bool = True  # the engine keeps an fp32 master (es.master_device can move it)

    @property
    def total(self) -> int:
        return sum(b for _, b, _ in self.rows)

    @property
    def host_bytes(self) -> int:
        return sum(b for _, b, _ in self.host)

    @property
    def fits(self) -> bool:
        return not self.problems and self.total <= self.gpu_bytes

    def table(self) -> str:
        lines = ["| per GPU | GiB | |", "|---|---|---|"]
        lines += [f"| {name} | {b / GIB:.2f} | {note} |" for name, b, note in self.rows]
        lines.append(f"| **total** | **{self.total / GIB:.2f}** | of {self.gpu_bytes / GIB:.0f} GiB |")
        lines += [f"| (host memory) {name} | {b / GIB:.2f} | {note} |" for name, b, note in self.host]
        if self.host:
            lines.append(f"| (host memory) **total** | **{self.host_bytes / GIB:.2f}** | of one process |")
        return "\n".join(lines)


def plan_memory(cfg, shape: ModelShape, gpu_bytes: int, sharing: int = 1) -> Plan:
    """The per-GPU plan of ``cfg`` (its es.master_device taken as given: auto = beside the model): the engine's own
    terms (Backend.memory_terms of the engine the config runs) around the terms every float engine shares."""
    terms = engine_class(engine_name(cfg)).memory_terms(cfg, shape, gpu_bytes, sharing)
    b = dtype_bytes(cfg)
    noise_b = b if cfg.es.noise_dtype == "param" else 4
    P, workers = shape.params, terms.master_copies
    kl_len = cfg.task.max_prompt_tokens + (cfg.eval.kl_max_new_tokens or cfg.task.max_new_tokens)
    master_on_gpu = cfg.es.master_device != "cpu"
    plan = Plan(gpu_bytes, problems=list(terms.problems), master=terms.master)
    add = plan.rows.append
    plan.rows += terms.weights
    on_workers = f"; {workers} workers" if workers > 1 else ""
    if terms.master:
        add(("master (fp32)", P * 4 if master_on_gpu else 0,
             "es.master_device=cpu: in pinned host memory" if not master_on_gpu else
             ("on every tensor-parallel GPU" if workers > 1 else "beside the model")))
        if not master_on_gpu:
            plan.host.append(("master (fp32)", P * 4 * workers, "pinned, off the GPU" + on_workers))
        state = rule_state_tensors(cfg.es)
        if state:  # the update rule's own fp32 tensors, beside the master
            what = " + ".join(state)
            if master_on_gpu:
                add(("update rule state", len(state) * P * 4, what))
            else:
                plan.host.append(("update rule state", len(state) * P * 4 * workers, what + on_workers))
    plan.rows += terms.generation
    add(("update/perturb buffers", shape.largest_tensor * (4 + noise_b + 4), "largest tensor's noise + fp32 delta"))
    if cfg.es.noise == "table":  # read on the device the weights are perturbed on
        add(("noise table", cfg.es.noise_table_values * 4, f"es.noise=table: {cfg.es.noise_table_values} float32 normals"))
    plan.rows += terms.evaluation
    add(("KL forward logits", kl_len * shape.vocab * (b + 4) if cfg.eval.kl_samples else 0,
         f"{kl_len} tokens{terms.kl_logits_note}"))
    add(("CUDA context and slack", CONTEXT_BYTES, ""))
    plan.host += terms.host
    if terms.copies_per_process and sharing > 1:  # members in flight: every process on the GPU holds all of the above
        add(("other processes on this GPU", (sharing - 1) * plan.total, f"{sharing} processes share it"))
    return plan


def cuda_dtype(cfg) -> str:
    """The model's dtype on CUDA (model.dtype=auto is bf16 there)."""
    return cfg.model.dtype if cfg.model.dtype != "auto" else "bfloat16"


def dtype_bytes(cfg) -> int:
    """Bytes per weight of the model on CUDA."""
    return DTYPE_BYTES[cuda_dtype(cfg)]


def rule_state_tensors(es_cfg) -> list[str]:
    """The model-size fp32 tensor sets the update rule keeps (es_repro/es/update_rules.py): momentum's velocity, and
    the base weights es.decay pulls toward."""
    kept = [("momentum's velocity", es_cfg.update == "momentum"), ("es.decay's base copy", es_cfg.decay > 0)]
    return [name for name, on in kept if on]


def levers(cfg, plan: Plan) -> list[str]:
    """The settings that would shrink this plan, most effective first: the master's place, the engine's own
    levers, the prompt length."""
    out = ["es.master_device=cpu"] if plan.master and cfg.es.master_device != "cpu" else []
    return out + engine_class(engine_name(cfg)).memory_levers(cfg) + ["task.max_prompt_tokens"]


def resolve_master_device(cfg, shape: ModelShape, gpu_bytes: int, sharing: int = 1):
    """(cfg with es.master_device decided, its plan): auto keeps the master beside the model when that fits and
    moves it to pinned host memory when only that fits."""
    plan = plan_memory(cfg, shape, gpu_bytes, sharing)
    if cfg.es.master_device == "auto" and plan.master and not plan.fits:
        moved = replace(cfg, es=replace(cfg.es, master_device="cpu"))
        moved_plan = plan_memory(moved, shape, gpu_bytes, sharing)
        if moved_plan.fits:
            return moved, moved_plan
    return cfg, plan


def refusal(cfg, plan: Plan) -> str:
    why = "; ".join(plan.problems) or f"it needs {plan.total / GIB:.1f} GiB per GPU of {plan.gpu_bytes / GIB:.0f} GiB"
    return (f"model={cfg.model.name} with generation.backend={cfg.generation.backend} does not fit: {why} "
            f"(python -m es_repro.plan <the same overrides> --gpu-gib {plan.gpu_bytes / GIB:.0f} shows the terms); "
            f"levers: {', '.join(levers(cfg, plan))}")


def check_fits(cfg, gpu_bytes: int, sharing: int = 1):
    """cfg with es.master_device decided, or ConfigError in one line when the run cannot fit; unknown shapes pass."""
    shape = model_shape(cfg.model)
    if shape is None:
        return cfg
    cfg, plan = resolve_master_device(cfg, shape, gpu_bytes, sharing)
    if not plan.fits:
        raise ConfigError(refusal(cfg, plan))
    return cfg
