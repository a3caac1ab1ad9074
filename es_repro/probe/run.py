"""The sigma/N probe (issue 15): measure a model's ES landscape before spending a run.

For each sigma in probe.sigmas, M = probe.candidates seeded perturbations (the same M noise directions at every
sigma, so sigmas compare like with like) are scored per prompt on a fixed pool of P = probe.prompts rows, next
to the base model; then es_repro/probe/report.py turns the per-prompt rewards into best-of-N gain curves,
p(dR > 0), the reward spread, the share of output-identical candidates and a one-line recommendation.

    python -m es_repro.probe experiment=repro_countdown_cpu task.train_size=64      # Hydra, conf/probe.yaml
    python -m es_repro.probe --report results/probe/<experiment>/<run> [--reward shaped]

Run directory: results/probe/<experiment>/<overrides> (es_repro/config/run_dirs.py run_name). Candidates are independent and
stored one by one (es_repro/probe/store.py): relaunching the same command scores only the missing ones, then
rewrites the report. Everything model-specific goes through the Backend's member_completions.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from es_repro.config.schema import RunConfig
from es_repro.es.strategy import SEED_LIMIT, Member

PROBE_STREAM = 0x50524F42  # "PROB": keeps candidate seeds apart from ES generations' (seed, g) streams


def candidate_seeds(run_seed: int, m: int) -> list[int]:
    """Noise seeds of candidates 0..m-1: candidate i depends on (run seed, i) only, so the list for a larger M
    starts with the list for a smaller one."""
    return [int(np.random.default_rng([run_seed, PROBE_STREAM, i]).integers(0, SEED_LIMIT)) for i in range(m)]


def prompt_pool(task, split: str, p: int) -> list[dict]:
    rows = {"train": task.train_rows, "eval": task.eval_rows, "all": task.train_rows + task.eval_rows}[split]
    if len(rows) < p:
        raise ValueError(f"probe.prompts={p} but probe.split={split} has only {len(rows)} rows; lower probe.prompts "
                         f"or raise task.train_size/task.eval_size (or use probe.split=all)")
    return rows[:p]


def _score(task, completions: list[str], rows: list[dict]) -> dict[str, np.ndarray]:
    from es_repro.tasks import score

    return {"binary": np.asarray(score(task.accuracy, completions, rows), np.float32),
            "shaped": np.asarray(score(task.reward, completions, rows), np.float32)}


def run_probe(cfg: RunConfig, run_dir: Path) -> dict:
    """Score every missing (sigma, candidate), then write the report; returns the report's summary."""
    from tqdm.auto import tqdm

    from es_repro.engines.base import build_backend
    from es_repro.probe import store
    from es_repro.probe.report import write_report
    from es_repro.run import lifecycle
    from es_repro.run.log import RunLog
    from es_repro.tasks import task_from_config
    from es_repro.util.timing import Timer

    if cfg.probe is None:
        raise ValueError("cfg.probe is None: compose the probe's config (conf/probe.yaml), not conf/config.yaml")
    p = cfg.probe
    log = RunLog(Path(run_dir))
    with lifecycle.failure_recorded(log):
        lifecycle.start(cfg, log, kind="probe")
        task = task_from_config(cfg.task)
        rows = prompt_pool(task, p.split, p.prompts)
        pool = store.pool_hash([r["prompt"] for r in rows])
        seeds = candidate_seeds(cfg.seed, p.candidates)
        results = {s: store.open_sigma(log.dir, s, seeds, len(rows), pool) for s in p.sigmas}
        todo = [(s, i) for s in p.sigmas for i in np.flatnonzero(~results[s]["done"])]
        base_path = log.dir / store.BASE_FILE
        if base_path.is_file():
            store.check_pool(base_path, store.load_npz(base_path), pool)
        if todo or not base_path.is_file():
            backend = build_backend(cfg, task)  # loaded only when something is left to score
            timer = Timer()

            def completions(member: Member, sigma: float) -> tuple[list[str], float]:
                t0 = time.perf_counter()
                out = backend.member_completions([member], sigma, rows, timer)[0]
                return out, time.perf_counter() - t0

            if not base_path.is_file():  # sigma = 0 through the same code path as every candidate
                texts, secs = completions(Member(seeds[0], 1), 0.0)
                store.save_npz(base_path, {**_score(task, texts, rows), "hashes": store.hashes(texts),
                                           "pool": np.uint64(pool), "seconds": np.float32(secs)})
            bar = tqdm(todo, desc="probe candidates", disable=not cfg.progress, dynamic_ncols=True)
            for sigma, i in bar:
                texts, secs = completions(Member(seeds[i], 1), sigma)
                data = results[sigma]
                for key, value in _score(task, texts, rows).items():
                    data[key][i] = value
                data["hashes"][i], data["seconds"][i], data["done"][i] = store.hashes(texts), secs, True
                store.save_npz(store.sigma_file(log.dir, sigma), data)
                bar.set_postfix(sigma=f"{sigma:g}", accuracy=f"{data['binary'][i].mean():.3f}",
                                reward=f"{data['shaped'][i].mean():.3f}", s=f"{secs:.1f}")
        summary = write_report(log.dir, p)
        log.finish(summary)
    print(f"[es-repro] probe done: {log.dir}\n{summary['recommendation']}")
    return summary


def main() -> None:
    """python -m es_repro.probe <overrides> (conf/probe.yaml); python -m es_repro.probe --report <dir> redraws a
    finished probe's report (es_repro/probe/report.py)."""
    if "--report" in sys.argv[1:]:
        from es_repro.probe.report import main as report_main

        sys.exit(report_main(sys.argv[1:]))
    _hydra_main()


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from es_repro.config.load import CONF_DIR, load_config, register
    from es_repro.util.errors import ConfigError

    register()

    @hydra.main(config_path=CONF_DIR, config_name="probe", version_base="1.3")
    def main(dcfg: DictConfig) -> dict:
        try:
            cfg = load_config(dcfg)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        return run_probe(cfg, Path(HydraConfig.get().runtime.output_dir))

    main()


if __name__ == "__main__":
    main()
