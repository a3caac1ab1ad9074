"""The paper's reported numbers (Table 1, Table 2), shipped as tidy CSV beside this module."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent / "paper"
# Display names for the paper's method keys (see paper/README.md).
METHOD_NAMES = {"base": "Base", "es": "ES", "ppo": "PPO", "grpo": "GRPO", "grpo_g8": "GRPO (group 8)",
                "grpo_g30": "GRPO (group 30)", "grpo_verl": "GRPO (verl)", "drgrpo_verl": "Dr.GRPO (verl)"}


def method_name(key: str) -> str:
    return METHOD_NAMES.get(key, key)


def paper_table1() -> pd.DataFrame:
    """model, method, accuracy (%); plus model_key = the model name lower-cased, as in conf/model/*.yaml."""
    df = pd.read_csv(PAPER_DIR / "table1.csv")
    return df.assign(model_key=df["model"].str.lower())


def paper_table2() -> pd.DataFrame:
    """task, model, method, beta, alpha, sigma, reward_mean/std, kl_mean/std, note; plus model_key."""
    df = pd.read_csv(PAPER_DIR / "table2.csv", keep_default_na=True)
    df["note"] = df["note"].fillna("")
    return df.assign(model_key=df["model"].str.lower())
