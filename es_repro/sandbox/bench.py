"""Sandboxed scoring throughput: ``python -m es_repro.sandbox.bench --kind math --n 1000``.

Scores n short answers (math: math-verify on boxed answers; arc: a small transform on two grids) through a
fresh pool and prints jobs per second, including the pool's start-up separately."""
from __future__ import annotations

import argparse
import sys
import time

from es_repro.sandbox import ISOLATIONS, SandboxPool, SandboxRefused, sandbox_limits

ANSWERS = ["\\frac{1}{2}", "0.5", "2\\sqrt{2}", "x^2+1", "[0, 1)", "\\{1, 2\\}", "3\\pi", "7", "-4", "\\frac{3}{8}"]


def jobs(kind: str, n: int) -> list[tuple[str, dict]]:
    if kind == "math":
        return [("math", {"gold": ANSWERS[i % 10], "answer": ANSWERS[(i * 7) % 10]}) for i in range(n)]
    code = "def transform(grid):\n    return [row[::-1] for row in grid]\n# %d"
    return [("arc", {"code": code % i, "inputs": [[[1, 2], [3, 4]], [[5, 6, 7]]]}) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("math", "arc"), default="math")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--isolation", choices=ISOLATIONS, default="auto")
    args = parser.parse_args()
    start = time.perf_counter()
    warm = [{"math": True}] if args.kind == "math" else [{"import": "numpy"}]
    try:
        pool = SandboxPool(sandbox_limits({"workers": args.workers, "isolation": args.isolation}), warm)
    except SandboxRefused as err:
        sys.exit(f"[bench] {err}")
    started = time.perf_counter()
    results = pool.run(jobs(args.kind, args.n))
    elapsed = time.perf_counter() - started
    ok = sum(r.ok for r in results)
    print(f"[bench] {args.kind}: {args.n} jobs in {elapsed:.2f} s = {args.n / elapsed:.1f} jobs/s on {args.workers} "
          f"workers ({ok} ok; pool start {started - start:.2f} s; isolation {pool.level})")
    pool.close()


if __name__ == "__main__":
    main()
