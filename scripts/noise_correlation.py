"""How independent are es.noise=table's noises? Empirical correlations over a real model's tensors (SmolLM2-135M's
parameter sizes, in ES's order), against the released code's i.i.d. generator noise (es.noise=iid) as the yardstick:
- between two members: corr(eps(s1), eps(s2)) over the whole model, for pairs of member seeds;
- within one member: corr(eps_i, eps_j) between same-sized tensors i != j (q_proj of one layer against another's).
For independent Gaussian vectors of n values, |corr| has mean sqrt(2 / pi) / sqrt(n).

    python scripts/noise_correlation.py [--pairs 10] [--values 67108864 --chunk 4096]
"""
from __future__ import annotations

import argparse
import math

import torch

from es_repro.engines.memory import shape_of_config
from es_repro.es.noise import NOISE_MODES, TableNoise, tensor_noise

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 64,
                "model_type": "llama"}


def member_noise(sizes: list[int], seed: int, mode) -> list[torch.Tensor]:
    return [tensor_noise(torch.empty(n), i, seed, mode, "float32") for i, n in enumerate(sizes)]


def corr(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    dot = sum(float(torch.dot(x.double(), y.double())) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x.double().square().sum()) for x in a))
    nb = math.sqrt(sum(float(y.double().square().sum()) for y in b))
    return dot / (na * nb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--values", type=int, default=1 << 26)
    ap.add_argument("--chunk", type=int, default=4096)
    args = ap.parse_args()
    sizes = shape_of_config(SMOLLM2_135M).tensor_sizes()
    n = sum(sizes)
    q_proj = [i for i, s in enumerate(sizes) if s == 576 * 576]  # q_proj and o_proj of every layer
    modes = {"iid": NOISE_MODES["iid"](), f"table ({args.values} values, chunk {args.chunk})":
             TableNoise(args.values, args.chunk)}
    print(f"SmolLM2-135M: {n} values in {len(sizes)} tensors; independent: mean |corr| = "
          f"{math.sqrt(2 / math.pi) / math.sqrt(n):.2e} (whole model), {math.sqrt(2 / math.pi) / 576:.2e} (one 576x576 tensor)\n")
    print("| noise | members: mean abs corr | max | tensors of one member: mean abs corr | max |")
    print("|---|---|---|---|---|")
    for name, mode in modes.items():
        member = [abs(corr(member_noise(sizes, 1000 + 2 * k, mode), member_noise(sizes, 1001 + 2 * k, mode)))
                  for k in range(args.pairs)]
        eps = member_noise(sizes, 7, mode)
        within = [abs(corr([eps[i]], [eps[j]])) for a, i in enumerate(q_proj) for j in q_proj[a + 1:]]
        print(f"| {name} | {sum(member) / len(member):.2e} | {max(member):.2e} | "
              f"{sum(within) / len(within):.2e} | {max(within):.2e} |")


if __name__ == "__main__":
    main()
