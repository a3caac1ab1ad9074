"""The run configuration's types: one dataclass per conf/ group, registered as Hydra's schema by config.register().

YAML under conf/ carries the values; these classes carry the types (Hydra rejects unknown keys and wrong types
while composing) and a doc line per field. Allowed values of the fields checked in config/checks.py sit here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
MODEL_SOURCES = ("hf", "gguf_package", "tiny_random", "random_shape")
PROMPT_FORMATS = ("raw", "chat")
MASTER_DEVICES = ("auto", "cpu")
LOWRANK_TARGETS = ("all", "projections")  # es.lowrank_targets (es_repro/engines/lowrank.py lowrank_users)
WANDB_MODES = ("disabled", "offline", "online")
BASELINE_METHODS = ("none", "grpo", "ppo")
PROBE_REWARDS = ("binary", "shaped")
PROBE_SPLITS = ("train", "eval", "all")


@dataclass
class ModelConfig:
    name: str = MISSING  # short label used in run names and tables
    source: str = "hf"  # hf: HF id or local dir | gguf_package: GGUF shipped in a pip package | tiny_random: built in code
    #                     | random_shape: a paper model's shape with random weights (path: es_repro/models/shapes.py)
    path: str = ""  # source=hf: HF id or local directory; source=gguf_package: the package's import name
    gguf_file: str = ""  # source=gguf_package: file name inside the package
    dtype: str = "auto"  # auto = bfloat16 on CUDA and on CPUs with native bf16 (ES only), else float32
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
    noise: str = "table"  # table: chunks of a shared noise table, the same on every device (es_repro/es/noise_table.py) | iid: torch.randn, tensor i seeded with seed+i (the released code's --seed_shift) | correlated: the released code's default (same seed per tensor)
    noise_table_values: int = 1 << 26  # es.noise=table: normals in the table (2^26 float32 = 256 MiB on each device)
    noise_table_chunk: int = 4096  # es.noise=table: values read from one offset
    antithetic: bool = False  # mirrored pairs (+eps, -eps) sharing one seed; population must be even
    master_device: str = "auto"  # auto: the fp32 master beside the model | cpu: pinned CPU memory (7B/8B on 80 GB)
    reuse_pair_noise: bool = True  # antithetic: a pair draws its noise once and holds it (one model-size copy)
    noise_cache: str = "auto"  # keep each member's noise until the update (no redraw): auto (CPU, if it fits) | on | off
    fitness: str = "zscore"  # zscore (paper, ddof=0, +1e-8) | centered_rank
    decay: float = 0.0  # pull toward the base weights each generation: theta -= decay * (theta - theta_base)
    update: str = "sgd"  # update rule (es_repro/es/update_rules.py): sgd (the paper) | momentum
    momentum: float = 0.9  # es.update=momentum only: v <- momentum * v + step; theta += v
    noise_dtype: str = "param"  # param: randn in the parameter dtype (the released code) | float32: always fp32
    seed_stream: str = "rng"  # rng: default_rng([seed, g]) per generation | released: the release's np.random stream
    prompts_per_generation: int = 0  # 0: every member sees all train prompts (paper); k>0: a seeded subset of k
    lowrank: int = 0  # 0: full-rank noise (the paper) | r > 0: opt-in population-batched rank-r perturbations (es_repro/engines/lowrank.py)
    members_per_forward: int = 8  # lowrank only: members that share one batched generate call (HF engine)
    lowrank_targets: str = "all"  # lowrank only: all (every Linear and Embedding weight) | projections (attention and
    # MLP projections, not the embeddings or the head: what the vLLM population engine perturbs as LoRA adapters)
    fitness_baseline: str = "none"  # none: a member's fitness is its mean reward | prompt: each prompt's reward is
    # centred over the population first (EGGROLL's choice for reasoning tasks), then averaged and shaped
    allow_noise_change: bool = False  # resume where the same seeds draw other noise (another GPU model; es_repro/es/fingerprint.py)
    qes: QESConfig = field(default_factory=QESConfig)  # es.update=qes settings (sigma, alpha in code units)


def es_config_from_dict(data: dict) -> ESConfig:
    """An ES section sent as plain values (dataclasses.asdict; a vLLM worker receives it so) as the typed ESConfig."""
    return ESConfig(**{**data, "qes": QESConfig(**data["qes"])})


@dataclass
class VLLMConfig:
    """generation.backend=vllm only: the engine's settings (es_repro/engines/vllm/backend.py)."""
    tensor_parallel_size: int = 1  # GPUs one engine spans (population sharding across processes is separate)
    gpu_memory_utilization: float = 0.7  # the share of each GPU (on CPU: of the NUMA node's RAM) for all engines on
    # it, split evenly (several processes per GPU); below vLLM's 0.92: the fp32 master and the KL scoring's logits
    # live beside the engine
    kv_cache_gb: float = 0.0  # > 0: a fixed KV cache size (vLLM's kv_cache_memory_bytes) instead of the share above
    enforce_eager: bool = False  # true: no CUDA graphs (vLLM-CPU runs eager either way)
    max_model_len: int = 0  # 0 = task.max_prompt_tokens + the longest generation the run asks for
    weight_write: str = "auto"  # auto: direct on CUDA if its start-up self-check passes, else reload | reload:
    # model_runner.reload_weights (every platform) | direct: model.load_weights into the engine's tensors as they are
    # (only where it keeps plain weights: CUDA without quantization), refused if the self-check fails
    max_loras: int = 32  # es.lowrank > 0 (the population engine): members served at once as LoRA slots; more run in waves
    max_lora_rank: int = 0  # es.lowrank > 0: vLLM's LoRA rank bound; 0 = the smallest rank vLLM allows >= es.lowrank


@dataclass
class GenerationConfig:
    backend: str = "hf"  # engine (es_repro/engines/base.py BACKENDS), or a factory given as package.module:function
    batch_size: int = 32  # prompts per generate() call
    sort_by_length: bool = True  # batch prompts of similar length together (less padding, same outputs)
    # Greedy decoding's repetition penalty. null = the model's own generation_config value (1.0 when it sets none):
    # what the release's generate(do_sample=False) did (Qwen2.5-Instruct: 1.05). Logged in run.json; every
    # engine applies the same value. KL samples are drawn without it (the k3 estimate needs the model's own law).
    repetition_penalty: Optional[float] = None
    cache: str = "dynamic"  # dynamic | static: a preallocated KV cache (on CUDA: compiled decode with CUDA graphs)
    compile: str = "auto"  # auto: compile with a static cache on CUDA (transformers' rule) | on: on CPU too | off
    packed_weights: str = "auto"  # auto: a bf16 model on CPU multiplies with oneDNN-packed weights (same bits) | on | off
    # Greedy decoding of full-rank members through es-repro's own loop for Llama-family models on CPU
    # (es_repro/engines/hf/decode.py): deterministic, not HF eager's bits. auto: on CPU unless es.seed_stream=released
    # (the release's arithmetic), a low-rank run (forward hooks), a static cache or a compiled decode | on | off
    fast_decode: str = "auto"
    linear_kernel: str = "auto"  # the fast decode's matmul: auto (a fixed rule per dtype and CPU vendor) | linear | packed | mm_t
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
    keep_base_model: bool = True  # false: load the base model for each KL evaluation and free it (7B/8B on 80 GB);
    # HF engines only: vLLM scores KL in its engine, with the base weights kept in host memory


@dataclass
class LoggerConfig:
    name: str = "none"  # where metrics.jsonl is mirrored (es_repro/run/mirrors.py LOGGERS): none | wandb
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

