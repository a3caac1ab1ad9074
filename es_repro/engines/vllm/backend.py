"""generation.backend=vllm: generation in a vLLM engine, ES weights on its workers (es_repro/engines/vllm/worker.py).

One engine (``vllm.LLM``) per process, tensor parallel optional; population sharding across processes stays in
es_repro/util/distributed.py, so SLURM, resume and replay are unchanged. The driver sends only seeds, scales and paths:
- fitness: for each member, perturb on the workers (written from the fp32 master, which also undoes the previous
  member), generate greedily, score; one restore at the end. After EVERY weight change the prefix cache is reset
  and the reset checked: vLLM caches KV by token prefix, so without it a member would reuse KV computed under
  another member's weights.
- weight writes (generation.vllm.weight_write): auto = direct on CUDA when a start-up self-check shows that a direct
  write leaves every engine tensor as vLLM's own reload does, else reload (vLLM-CPU: reload, its direct write fails).
- greedy decoding as the HF backend: temperature 0, the same prompt token ids (render_prompt, no special tokens),
  the task's stop strings kept in the output, the resolved generation.repetition_penalty; completions decoded
  with the HF tokenizer and cut by cut_at_stop, exactly as HFGenerator does.
- KL samples come from the engine (seeded per request, no penalty), and so do their log-probabilities: each
  (prompt, completion) goes back in as a prompt with prompt_logprobs=0, and vLLM returns log p of every actual
  token (float32 log_softmax of the model's logits). The base model's come from the same engine with the base
  weights written in (kept in host memory on the workers) and cast(master) written back after: no HF model on
  the device, no model file per evaluation.
- checkpoints: the HF backend's files (model.safetensors, master.safetensors, update_rule.safetensors), so a run
  resumes on either engine.
- es.lowrank > 0: the population engine instead of per-member writes: each wave of generation.vllm.max_loras
  low-rank members is registered as LoRA adapters on the workers and generated in one call
  (es_repro/engines/vllm/population.py).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from es_repro.engines.base import Backend, Pair, builds
from es_repro.engines.hf.generation import cut_at_stop, model_repetition_penalty
from es_repro.engines.lowrank import lowrank_member_mean
from es_repro.engines.vllm import memory
from es_repro.engines.vllm.checks import check_engine_choice, check_engine_process, require_vllm, version_problem
from es_repro.engines.vllm.population import ADAPTER_PATH, lora_engine_args, waves
from es_repro.es.strategy import Member
from es_repro.tasks.base import Row, Task
from es_repro.util import distributed
from es_repro.util.timing import Timer

WORKER_EXTENSION = "es_repro.engines.vllm.worker.ESWorkerExtension"
# weight_write=auto's probe member: a step of 1.0 changes every tensor in any dtype (never generated with)
PROBE_SEED, PROBE_SCALE = 2**31 - 1, 1.0


class PrefixCacheResetFailed(RuntimeError):
    """vLLM refused to drop its prefix cache after a weight change (it would serve stale KV)."""


class VLLMBackend(Backend):
    name = "vllm"
    memory_plan = memory  # es_repro/engines/vllm/memory.py

    def __init__(self, llm, tokenizer, *, model_dir: str, prompt_format: str, max_new_tokens: int,
                 stop_strings: Sequence[str], repetition_penalty: float, describe: dict | None = None,
                 lowrank: int = 0, max_loras: int = 0):
        import vllm  # the engine's own module (or a test's stand-in), imported by build()

        super().__init__()  # no HF reference model: the engine scores KL under the base weights itself
        self._vllm = vllm
        self.llm, self.tokenizer, self.model_dir = llm, tokenizer, model_dir
        self.prompt_format, self.max_new_tokens = prompt_format, max_new_tokens
        self.stop_strings, self.repetition_penalty = tuple(stop_strings), repetition_penalty
        self._describe = describe or {}
        self.generated_tokens = 0
        self.min_new_tokens = 0  # the benchmark forces full-length generations with it
        self.calls: list[tuple[int, int, int]] = []  # (requests, longest prompt, longest completion) per generate
        self.write_times: list[float] = []  # seconds of each member's weight write in the last member_completions
        # es.lowrank > 0: the population engine (es_repro/engines/vllm/population.py), waves of max_loras members
        self.lowrank, self.max_loras = lowrank, max_loras
        self.register_times: list[float] = []  # seconds of each wave's adapter registration (on the worker)

    @classmethod
    def check_config(cls, cfg) -> None:
        check_engine_choice(cfg)

    @classmethod
    def preflight(cls, cfg) -> None:
        require_vllm()  # an installed engine is a fact of this machine, not of the config

    @classmethod
    def devices_per_process(cls, cfg) -> int:
        return cfg.generation.vllm.tensor_parallel_size  # one engine spans its tensor-parallel group

    def describe(self) -> dict:
        return {"name": self.name, "repetition_penalty": self.repetition_penalty, **self._describe}

    def update_stats(self) -> dict:
        """The mean write time of this process's members in the generation (the weight_write mode is in run.json);
        the population engine: its waves and the seconds their adapters took to build and register."""
        if self.lowrank:
            return {"waves": len(self.register_times), "register_s": sum(self.register_times)}
        return {"write_s_per_member": sum(self.write_times) / len(self.write_times)} if self.write_times else {}

    # engine calls ---------------------------------------------------------------------------------------------
    def _rpc(self, method: str, *args) -> list:
        return self.llm.collective_rpc(method, args=args)

    def _weights_changed(self) -> None:
        if not self.llm.reset_prefix_cache():
            raise PrefixCacheResetFailed("vLLM did not reset its prefix cache after a weight change; generating "
                                         "now would reuse KV computed under other weights")

    def _write(self, method: str, *args) -> list:
        out = self._rpc(method, *args)
        self._weights_changed()
        return out

    def init_master(self, es_cfg, dtype: str) -> str:
        """The master on the workers, written with reload; returns the workers' device type ("cuda", "cpu")."""
        return self._write("es_init", self.model_dir, dtype, dataclasses.asdict(es_cfg))[0]

    # weight writes ------------------------------------------------------------------------------------------
    def direct_write_problem(self) -> str | None:
        """The self-check: the probe member written with direct must leave every engine parameter (vLLM's names
        and layout, compared by checksum on each worker) as vLLM's own load path, reload, leaves it after writing
        the same cast(master + scale * eps). None if so, else the first tensor that differs or where direct
        failed. The engine holds cast(master) again after it, written by the current writer."""
        try:
            want = self._write("es_probe_write", "reload", PROBE_SEED, PROBE_SCALE)
            self._write("es_restore")  # direct must write every tensor itself, not find reload's values there
            got = self._write("es_probe_write", "direct", PROBE_SEED, PROBE_SCALE)
        finally:
            self._write("es_restore")
        for rank, (expected, found) in enumerate(zip(want, got)):
            where = f"rank {rank}: " if len(want) > 1 else ""
            if isinstance(expected, str):
                raise RuntimeError(f"the reload write of the self-check failed: {where}{expected}")
            if isinstance(found, str):
                return where + found
            differ = [n for n in expected if found.get(n) != expected[n]] + sorted(set(found) - set(expected))
            if differ:
                return (f"{where}{differ[0]} differs from vLLM's own load of the same weights"
                        + (f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""))
        return None

    def select_weight_write(self, requested: str, device: str) -> str:
        """generation.vllm.weight_write: reload as asked; auto off CUDA: reload (vLLM-CPU's direct write fails);
        auto on CUDA: direct if the self-check passes, else reload with a one-line warning; direct: the self-check
        must pass (a silent wrong write would corrupt the run)."""
        chosen, why = "reload", "asked" if requested == "reload" else f"auto on {device}"
        if requested == "direct" or (requested == "auto" and device == "cuda"):
            t0 = time.perf_counter()
            problem = self.direct_write_problem()
            if problem is None:
                chosen, why = "direct", f"start-up self-check passed in {time.perf_counter() - t0:.1f}s"
            elif requested == "direct":
                raise RuntimeError(f"generation.vllm.weight_write=direct failed its start-up self-check: {problem}; "
                                   f"use generation.vllm.weight_write=auto or reload")
            else:
                print(f"[es-repro] WARNING: generation.vllm.weight_write=auto: direct writes failed the start-up "
                      f"self-check ({problem}); writing weights with reload")
                why = "direct failed the start-up self-check"
        self._rpc("es_set_write", chosen)
        self._describe["weight_write"] = chosen
        print(f"[es-repro] vLLM weight writes: {chosen} ({why})")
        return chosen

    # generation -----------------------------------------------------------------------------------------------
    def prompt_ids(self, rows: Sequence[Row]) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in self.prompts(rows)]

    def greedy_params(self, max_new_tokens: int | None = None):
        max_tokens = max_new_tokens or self.max_new_tokens
        forced = dict(min_tokens=min(self.min_new_tokens, max_tokens), ignore_eos=True) if self.min_new_tokens else {}
        return self._vllm.SamplingParams(
            temperature=0.0, max_tokens=max_tokens, stop=list(self.stop_strings) or None,
            include_stop_str_in_output=True, repetition_penalty=self.repetition_penalty, **forced)

    def _run(self, prompt_ids: list[list[int]], params, adapters: list | None = None) -> list[list[int]]:
        lora = {"lora_request": adapters} if adapters else {}  # one LoRARequest per prompt (the population engine)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False, **lora)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        self.generated_tokens += sum(map(len, completions))
        self.calls.append((len(prompt_ids), max(map(len, prompt_ids), default=0), max(map(len, completions), default=0)))
        return completions

    def meta_model(self):
        """The HF model on the meta device (no memory): its shape, for the benchmark's hardware-limit column."""
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.model_dir, local_files_only=True))

    def generate(self, rows: Sequence[Row], *, max_new_tokens: int | None = None) -> list[str]:
        return self._texts(self._run(self.prompt_ids(rows), self.greedy_params(max_new_tokens)))

    def _texts(self, completions: list[list[int]]) -> list[str]:
        # decoded and cut as HFGenerator does, so both engines' strings compare token for token
        return [cut_at_stop(self.tokenizer.decode(c, skip_special_tokens=True), self.stop_strings) for c in completions]

    def sample_ids(self, rows: Sequence[Row], *, temperature: float, seed: int,
                   max_new_tokens: int | None = None) -> list[tuple[list[int], list[int]]]:
        """One seeded stream per request (a repeated row, kl_samples > 1, still gets its own sample)."""
        ids = self.prompt_ids(rows)
        params = [self._vllm.SamplingParams(
            temperature=temperature, top_p=1.0, top_k=0, seed=request_seed(seed, i), repetition_penalty=1.0,
            max_tokens=max_new_tokens or self.max_new_tokens, stop=list(self.stop_strings) or None,
            include_stop_str_in_output=True) for i in range(len(ids))]
        return list(zip(ids, self._run(ids, params)))

    # log-probabilities for KL ---------------------------------------------------------------------------------
    def token_logprobs(self, pairs: Sequence[Pair], *, reference: bool = False) -> list[torch.Tensor]:
        """Scored by the engine: under cast(master), or (reference) under the base weights written in for the call
        and cast(master) written back after it."""
        if not reference:
            return self._score(pairs)
        self._write("es_write_base")
        try:
            return self._score(pairs)
        finally:
            self._write("es_restore")

    def _score(self, pairs: Sequence[Pair]) -> list[torch.Tensor]:
        if not pairs:
            return []
        # one token is generated (vLLM generates at least one) and dropped; prompt_logprobs skips the prefix cache
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(p) + list(c)} for p, c in pairs], params, use_tqdm=False)
        return [completion_logprobs(o.prompt_logprobs, p, c) for (p, c), o in zip(pairs, outputs)]

    # ES -------------------------------------------------------------------------------------------------------
    def member_completions(self, members: Sequence[Member], sigma: float, rows: Sequence[Row], timer: Timer,
                           progress: str = "") -> list[list[str]]:
        if self.lowrank:
            return self._population_completions(members, sigma, rows, timer)
        out, perturbed, self.write_times = [], False, []
        try:
            for member in members:
                with timer("perturb"):  # written from the master: also undoes the previous member
                    perturbed, t0 = True, time.perf_counter()
                    self._write("es_perturb", int(member.seed), float(member.sign * sigma))
                    self.write_times.append(time.perf_counter() - t0)
                with timer("generate"):
                    out.append(self.generate(rows))
        finally:
            if perturbed:
                with timer("restore"):
                    self._write("es_restore")
        return out

    def _population_completions(self, members: Sequence[Member], sigma: float, rows: Sequence[Row],
                                timer: Timer) -> list[list[str]]:
        """Waves of max_loras members: the workers register each member's adapter (LoRA id j + 1), then ONE
        generate over members x rows, each request naming its member's adapter. The base weights are untouched."""
        from vllm.lora.request import LoRARequest

        ids, params, out, self.register_times = self.prompt_ids(rows), self.greedy_params(), [], []
        for wave in waves(members, self.max_loras):
            with timer("perturb"):  # adapters replace the previous wave's, then the prefix cache is dropped
                seconds = self._write("es_set_members", [int(m.seed) for m in wave], [int(m.sign) for m in wave],
                                      float(sigma))
                self.register_times.append(max(seconds))
            adapters = [LoRARequest(f"es-member-{j + 1}", j + 1, ADAPTER_PATH) for j in range(len(wave)) for _ in ids]
            with timer("generate"):
                texts = self._texts(self._run([p for _ in wave for p in ids], params, adapters))
            out.extend(texts[j * len(ids):(j + 1) * len(ids)] for j in range(len(wave)))
        return out

    def member_mean(self, rewards: list[float]) -> float:
        return lowrank_member_mean(rewards) if self.lowrank else Backend.member_mean(rewards)

    def apply_update(self, seed_coeffs) -> None:
        seed_coeffs = list(seed_coeffs)
        self._write("es_update", [int(s) for s, _ in seed_coeffs], [float(c) for _, c in seed_coeffs])

    def save_state(self, path: Path) -> None:
        self._rpc("es_save_state", str(Path(path).resolve()))

    def load_state(self, path: Path) -> None:
        self._write("es_load_state", str(Path(path).resolve()))

    def export(self, path: Path) -> None:
        """config.json, generation_config.json, tokenizer files and model.safetensors (cast(master))."""
        from transformers import AutoConfig

        path = Path(path).resolve()
        path.mkdir(parents=True, exist_ok=True)
        self._rpc("es_save_model", str(path))
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        config.dtype = self._describe.get("dtype", "float32")
        config.save_pretrained(path)
        generation_config(self.model_dir).save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def completion_logprobs(prompt_logprobs, prompt: Sequence[int], completion: Sequence[int]) -> torch.Tensor:
    """The completion's part of vLLM's prompt_logprobs (one {token id: Logprob} per position, None at the first;
    with prompt_logprobs=0 the actual token's): float32, the values vLLM computed."""
    entries = prompt_logprobs[len(prompt):]
    if len(entries) != len(completion):
        raise ValueError(f"vLLM returned {len(entries)} completion log-probabilities for {len(completion)} tokens")
    return torch.tensor([entry[token].logprob for entry, token in zip(entries, completion)], dtype=torch.float32)


def request_seed(seed: int, index: int) -> int:
    """A per-request sampling seed from (evaluation seed, request index); fits vLLM's int seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generation_config(model_dir: str):
    """The model's generation_config as HF's from_pretrained builds it (the file, else derived from config.json)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir, local_files_only=True))


def resolved_repetition_penalty(cfg, model_dir: str) -> float:
    """generation.repetition_penalty, else the model's own value: what the HF backend applies."""
    if cfg.generation.repetition_penalty is not None:
        return cfg.generation.repetition_penalty
    return model_repetition_penalty(SimpleNamespace(generation_config=generation_config(model_dir)))


def model_directory(model_cfg) -> str:
    """The directory vLLM loads: the converted GGUF checkpoint, a local dir, an HF id's cached snapshot, or the
    tiny random model saved once (the HF backend builds it in memory; vLLM needs files)."""
    from es_repro.models.loading import cache_root, gguf_checkpoint, save_checkpoint_atomically

    if model_cfg.source == "gguf_package":
        return str(gguf_checkpoint(model_cfg.path, model_cfg.gguf_file))
    if model_cfg.source in ("tiny_random", "random_shape"):
        name = "tiny-random" if model_cfg.source == "tiny_random" else random_shape_name(model_cfg)
        target = cache_root() / f"{name}-seed{model_cfg.seed}"
        if not (target / "config.json").is_file():
            save_checkpoint_atomically(*_build_in_code(model_cfg), target)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the model built on the GPU is gone; vLLM profiles the free memory next
        return str(target)
    if Path(model_cfg.path).is_dir():
        return str(Path(model_cfg.path).resolve())
    from huggingface_hub import snapshot_download

    return snapshot_download(model_cfg.path, local_files_only=True)


def _build_in_code(model_cfg):
    """A model built from code (tests, the benchmark's random-weight shapes), to be saved for the engine. A random
    shape is built on the device and in the dtype the HF backend's load_model uses: its random init draws from that
    device's generator, so the two engines score the same weights (`python -m es_repro.bench --modes
    default,vllm`)."""
    if model_cfg.source == "tiny_random":
        from es_repro.models.tiny import build_tiny_model

        return build_tiny_model(seed=model_cfg.seed)
    from es_repro.models.loading import resolve_device, resolve_dtype
    from es_repro.models.shapes import build_random_shape

    device = resolve_device(model_cfg.device)
    return build_random_shape(model_cfg.path, dtype=resolve_dtype(model_cfg.dtype, device), device=device,
                              seed=model_cfg.seed)


def random_shape_name(model_cfg) -> str:
    """The cached checkpoint's name: the init differs per device kind and dtype, so each has its own."""
    from es_repro.models.loading import resolve_device

    return f"random-{model_cfg.path}-{resolve_device(model_cfg.device).type}-{engine_dtype(model_cfg)}"


def engine_dtype(model_cfg) -> str:
    """model.dtype as the HF backend resolves it (auto: bf16 on CUDA, bf16 on CPUs with native bf16, else fp32)."""
    from es_repro.models.loading import DTYPES, resolve_device, resolve_dtype

    dtype = resolve_dtype(model_cfg.dtype, resolve_device(model_cfg.device))
    return next(name for name, d in DTYPES.items() if d == dtype)


def max_model_len(cfg) -> int:
    """+1: KL scoring sends a whole sample (prompt + completion) as a prompt, and vLLM refuses a prompt that leaves
    no room for the one token it then generates."""
    if cfg.generation.vllm.max_model_len:
        return cfg.generation.vllm.max_model_len
    return cfg.task.max_prompt_tokens + max(cfg.task.max_new_tokens, cfg.eval.kl_max_new_tokens) + 1


def engine_args(cfg, model_dir: str, dtype: str, placement: tuple[list[int], int] = ([], 1)) -> dict:
    """vllm.LLM's keywords. placement = (this process's GPUs, processes sharing them), from
    distributed.placement: engines that share a GPU split generation.vllm.gpu_memory_utilization evenly,
    and an engine whose GPUs are not the first ones is placed with device_ids (vLLM's own placement; the engine
    would otherwise take GPU 0 whatever the process's rank)."""
    v = cfg.generation.vllm
    devices, sharing = placement
    args = dict(model=model_dir, tokenizer=model_dir, dtype=dtype, seed=cfg.seed,
                tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization / sharing,
                enforce_eager=v.enforce_eager, max_model_len=max_model_len(cfg),
                worker_extension_cls=WORKER_EXTENSION)
    if devices and devices != list(range(len(devices))):
        args["device_ids"] = devices
    if v.kv_cache_gb:
        args["kv_cache_memory_bytes"] = int(v.kv_cache_gb * (1 << 30))
    if cfg.es.lowrank:
        args.update(lora_engine_args(cfg))
    return args


def _check_placement(vllm, args: dict) -> None:
    """Older vLLM has no device_ids: say so before the engine silently lands on GPU 0 beside another one."""
    if "device_ids" not in args:
        return
    from vllm.engine.arg_utils import EngineArgs

    if "device_ids" not in EngineArgs.__dataclass_fields__:
        raise RuntimeError(
            f"this process should run its engine on GPU(s) {args['device_ids']}, but vLLM "
            f"{getattr(vllm, '__version__', '?')} cannot place an engine (no device_ids): use vLLM >= 0.32, or give "
            "each process its own GPU through CUDA_VISIBLE_DEVICES (SLURM: --gpus-per-task=1)")


def node_local_cache(env: dict) -> dict:
    """VLLM_CACHE_ROOT on node-local disk unless it is set: vLLM's default (~/.cache/vllm) under a cluster's shared
    home has every engine of every node writing the same compile-cache files."""
    if env.get("VLLM_CACHE_ROOT"):
        return {}
    base = env.get("SLURM_TMPDIR") or env.get("TMPDIR") or "/tmp"
    return {"VLLM_CACHE_ROOT": str(Path(base) / f"vllm-cache-{os.getuid()}")}


@builds(VLLMBackend)
def build(cfg, task: Task) -> VLLMBackend:
    """Engine first (vLLM sizes its memory from what is free at start), then the master on its workers."""
    require_vllm()
    check_engine_process(dict(os.environ), distributed.world_size())
    os.environ.update(node_local_cache(dict(os.environ)))  # before vLLM reads its settings; its workers inherit it
    import vllm
    from transformers import AutoTokenizer

    problem = version_problem(getattr(vllm, "__version__", "unknown"))
    if problem:
        print(f"[es-repro] WARNING: {problem}")
    v = cfg.generation.vllm
    model_dir, dtype = model_directory(cfg.model), engine_dtype(cfg.model)
    devices, turn, sharing, turns = distributed.placement(v.tensor_parallel_size)
    args = engine_args(cfg, model_dir, dtype, (devices, sharing))
    _check_placement(vllm, args)
    llm = distributed.in_turns(turn, turns, lambda: vllm.LLM(**args))
    backend = VLLMBackend(
        llm, AutoTokenizer.from_pretrained(model_dir, local_files_only=True), model_dir=model_dir,
        prompt_format=cfg.task.prompt_format, max_new_tokens=cfg.task.max_new_tokens, stop_strings=task.stop_strings,
        repetition_penalty=resolved_repetition_penalty(cfg, model_dir),
        describe={"vllm": getattr(vllm, "__version__", "unknown"), "dtype": dtype,
                  "tensor_parallel_size": v.tensor_parallel_size, "devices": devices,
                  "engines_sharing_devices": sharing,
                  **({"members": f"LoRA adapters, waves of {v.max_loras}"} if cfg.es.lowrank else {})},
        lowrank=cfg.es.lowrank, max_loras=v.max_loras)
    device = backend.init_master(cfg.es, dtype)
    if cfg.eval.kl_samples > 0:
        backend._rpc("es_keep_base")  # before any update or resume: the base model's weights
    backend.select_weight_write(v.weight_write, device)
    return backend
