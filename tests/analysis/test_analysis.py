"""es_repro.analysis against synthetic run trees with answers known by construction (es_repro.analysis.fixtures),
plus one real tiny ES run to pin the loader to what train_es actually writes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from es_repro import analysis as A
from es_repro.analysis import fixtures as F

CD_MODEL, CC_MODEL = "qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return F.paper_tree(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def df(tree) -> pd.DataFrame:
    return A.load_runs(tree)


def run_rows(df: pd.DataFrame, suffix: str) -> pd.DataFrame:
    return df[df["run_dir"].str.endswith(suffix)].sort_values("step")


# Loading --------------------------------------------------------------------------------------------------------
def test_loader_finds_every_run_by_run_json_and_ignores_clutter(tree, df):
    assert df["run_dir"].nunique() == 15 + 12  # countdown: 3 ES + 8 GRPO grid + 2 unfinished + 2 PPO; conciseness: 12
    assert len(A.find_runs(tree / "countdown" / "es" / "seed=0")) == 1  # a run directory itself is a tree
    assert set(df["method"]) == {"es", "grpo", "ppo"}
    assert set(df["status"]) == {"finished", "failed", "running"}


def test_one_row_per_run_and_step_with_train_and_eval_merged(df):
    es0 = run_rows(df, "es/seed=0")
    assert list(es0["step"]) == [0, 1, 2, 3, 4]
    assert list(es0["samples"]) == [0, 60, 120, 180, 240]
    step2 = es0[es0["step"] == 2].iloc[0]
    assert step2["has_train"] and step2["has_eval"]
    assert step2["reward_mean"] == pytest.approx(0.2) and step2["eval_accuracy"] == pytest.approx(0.15)
    step0 = es0[es0["step"] == 0].iloc[0]
    assert step0["has_eval"] and not step0["has_train"] and math.isnan(step0["reward_mean"])
    assert len(run_rows(df, "es/seed=1")) == 5  # the torn last line is dropped, not an error
    assert "seeds" not in df.columns and "rewards" not in df.columns  # list fields stay out of the tidy frame


def test_config_is_flattened_into_dotted_columns(df):
    es0 = run_rows(df, "es/seed=0").iloc[0]
    assert es0["es.sigma"] == 1e-3 and es0["es.alpha"] == 5e-4 and es0["model.name"] == CD_MODEL
    assert es0["task.name"] == "countdown" and es0["seed"] == 0 and es0["task.options"] == "{}"
    grpo = df[df["run_dir"].str.contains("grpo/beta=0.005,lr=1e-05,seed=1")].iloc[0]
    assert (grpo["beta"], grpo["lr"], grpo["group"]) == (0.005, 1e-05, 8)
    assert grpo["baseline.kl_coef"] == 0.005 and grpo["baseline.method"] == "grpo"
    ppo = df[df["method"] == "ppo"].iloc[0]
    assert ppo["beta"] == 0.05 and pd.isna(ppo["group"])
    es = df[df["method"] == "es"]  # ES runs carry the schema's unused baseline block: no RL hyper-parameters
    assert es["beta"].isna().all() and es["lr"].isna().all() and es["group"].isna().all()


def test_setting_pools_seeds_and_separates_grid_points(df):
    grpo = df[(df["method"] == "grpo") & (df["task.name"] == "countdown")]
    assert grpo["setting"].nunique() == 4  # trl.seed and trl.output_dir differ per run but are not the setting
    assert sorted(grpo.groupby("setting")["seed"].nunique()) == [2, 2, 2, 3]  # + the two unfinished seed-7 runs


def test_flatten():
    assert A.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == {"a.b": 1, "a.c.d": None,
                                                                               "e": "[1, 2]", "f": "{}"}


def test_loader_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.load_runs(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(A.RunFormatError, match=r"bad/run.json: missing field 'kind'"):
        A.load_runs(tmp_path)
    (bad / "run.json").write_text(json.dumps({"kind": "es", "config": {}}))
    (bad / "metrics.jsonl").write_text('{"kind": "train", "samples": 1}\n')
    with pytest.raises(A.RunFormatError, match=r"metrics.jsonl: line 1 \(train\) has no 'step'"):
        A.load_runs(tmp_path)


@pytest.mark.slow
def test_loader_reads_a_real_es_run(tmp_path):
    from es_repro.train import run_es
    from tests.helpers import make_cfg

    cfg = make_cfg(["es.generations=2", "eval.every=1", "eval.kl_prompts=1", "es.population=2",
                    "task.train_size=2", "task.eval_size=2"])
    run_es(cfg, tmp_path / "results" / "x" / "run")
    df = A.load_runs(tmp_path / "results")
    assert list(df["step"]) == [0, 1, 2] and list(df["samples"]) == [0, 4, 8]  # N=2 members x 2 prompts
    assert df["has_eval"].all() and list(df["has_train"]) == [False, True, True]
    assert (df["method"] == "es").all() and (df["status"] == "finished").all()
    assert (df["es.population"] == 2).all() and (df["model.name"] == "tiny-random").all()
    assert df["eval_kl"].notna().all() and df["reward_mean"].iloc[1:].notna().all()
    t1 = A.table1(df)
    assert set(t1["method"]) == {"base", "es"} and (t1["n"] == 1).all()


def test_load_wandb_with_a_stand_in_api():
    class Run:
        def __init__(self, rid, config, history):
            self.id, self.config, self.state, self._h = rid, config, "finished", history

        def scan_history(self):
            return iter(self._h)

    class Api:
        def runs(self, path):
            assert path == "me/es-repro"
            es = Run("a", {"seed": 0, "model": {"name": "m"}, "task": {"name": "t"}, "es": {"sigma": 0.001}},
                     [{"_step": 0, "step": 0, "samples": 0, "eval_accuracy": 0.1, "eval_kl": 0.0, "reward_mean": None},
                      {"_step": 1, "step": 1, "samples": 30, "reward_mean": 0.5},  # train + eval merged by wandb:
                      {"_step": 2, "step": 2, "samples": 60, "reward_mean": 0.7, "eval_accuracy": 0.3}])
            rl = Run("b", {"seed": 1, "model": {"name": "m"}, "task": {"name": "t"},
                           "baseline": {"method": "grpo", "kl_coef": 0.01}}, [{"_step": 3, "reward_mean": 0.2}])
            es2 = Run("c", {"seed": 2, "model": {"name": "m"}, "task": {"name": "t"},
                            "baseline": {"method": "none", "kl_coef": 0.001}}, [{"_step": 1, "reward_mean": 0.1}])
            return [es, rl, es2]

    df = A.load_wandb("es-repro", "me", api=Api())
    a = df[df["run_dir"] == "wandb:me/es-repro/a"]
    assert list(a["step"]) == [0, 1, 2] and list(a["has_eval"]) == [True, False, True] and a["es.sigma"].iloc[0] == 0.001
    assert list(a["has_train"]) == [False, True, True] and list(a["reward_mean"].fillna(-1)) == [-1, 0.5, 0.7]
    assert list(a["samples"]) == [0, 30, 60] and a["eval_accuracy"].iloc[2] == 0.3
    b = df[df["run_dir"] == "wandb:me/es-repro/b"].iloc[0]
    assert (b["method"], b["step"], b["beta"]) == ("grpo", 3, 0.01)
    c = df[df["run_dir"] == "wandb:me/es-repro/c"].iloc[0]  # baseline.method "none" is an ES run
    assert c["method"] == "es" and pd.isna(c["beta"])


# Tables ---------------------------------------------------------------------------------------------------------
def test_table1_known_answers_best_of_grid_and_paper_numbers(df):
    t1 = A.table1(df).set_index(["method", "model"])
    for (method, model), (mean, std, n, _) in F.KNOWN["table1"].items():
        row = t1.loc[(method, model)]
        assert (row["mean"], row["std"], row["n"]) == (pytest.approx(mean), pytest.approx(std, abs=1e-9), n), method
        assert row["paper"] == F.KNOWN["paper_table1"][method]
    best = t1.loc[("grpo_g8", CD_MODEL)]  # (1e-3, 1e-5) has the best mean, 18 %; it is not first in any order
    assert best["n_settings"] == 4 and best["setting_label"] == "kl_coef=0.001, trl.learning_rate=1e-05"
    assert json.loads(best["setting"])["baseline.trl.learning_rate"] == 1e-5
    assert math.isnan(t1.loc[("es", CC_MODEL), "paper"])  # Table 1 numbers are Countdown numbers


def test_table1_ignores_unfinished_runs_unless_asked(df):
    # The failed and running runs (accuracy 0.9) would make (5e-3, 1e-6) the best: (5+7+90+90)/4 = 48 %.
    t1 = A.table1(df, finished_only=False).set_index(["method", "model"])
    assert t1.loc[("grpo_g8", CD_MODEL), "mean"] == pytest.approx(48.0)


def test_best_settings_picks_the_best_mean_not_the_best_run():
    finals = pd.DataFrame({"g": ["x"] * 4, "setting": ['{"a": 1}', '{"a": 1}', '{"a": 2}', '{"a": 2}'],
                           "acc": [0.9, 0.1, 0.6, 0.6]})
    best = A.best_settings(finals, "acc", ["g"]).iloc[0]
    assert best["setting"] == '{"a": 2}' and best["mean"] == 0.6 and best["setting_label"] == "a=2"


def test_stability_table_known_answers_and_paper_rows(df):
    st = A.stability_table(df)
    cc = st[st["task"] == "conciseness"].set_index(["method", "alpha"])
    es = cc.loc[("es", 0.0005)]
    assert es["sigma"] == 0.001 and math.isnan(es["beta"]) and es["n"] == 4
    assert es["reward_mean"] == pytest.approx(0.889) and es["reward_std"] == pytest.approx(math.sqrt(0.000032 / 3))
    assert es["kl_mean"] == pytest.approx(0.275) and es["kl_std"] == pytest.approx(math.sqrt(0.0125 / 3))
    assert es["reward_metric"] == "eval_display_reward"
    assert (es["paper_reward_mean"], es["paper_reward_std"], es["paper_kl_mean"]) == (0.889, 0.004, 0.274)
    grpo = cc.loc[("grpo", 5e-6)]
    assert grpo["beta"] == 0.0167 and math.isnan(grpo["sigma"]) and grpo["paper_kl_mean"] == 1.591
    cd = st[st["task"] == "countdown"]
    assert cd["paper_reward_mean"].isna().all() and (cd["reward_metric"] == "eval_reward").all()
    assert set(A.stability_table(df, min_reward=0.9)["alpha"]) == {0.00075, 5e-6}


def test_renderers_show_numbers_paper_and_command(df):
    cmd = "python -m es_repro.analysis runs --out figs"
    md = A.table1_markdown(A.table1(df), cmd)
    assert "35.0 ± 5.0 (n=3)" in md and "| 37.3 |" in md and f"_Regenerate: `{cmd}`_" in md
    assert "best of 4 settings: kl_coef=0.001, trl.learning_rate=1e-05" in md
    tex = A.table1_latex(A.table1(df), cmd)
    assert tex.startswith(f"% Regenerate: {cmd}")  # a comment line: not escaped
    assert r"35.0 $\pm$ 5.0 (n=3)" in tex and r"es\_repro.analysis" in tex
    smd = A.stability_markdown(A.stability_table(df), cmd)
    assert "0.889 ± 0.003 (n=4)" in smd and "0.889 ± 0.004" in smd and cmd in smd


# Figures --------------------------------------------------------------------------------------------------------
def test_pareto_front_of_a_known_point_set():
    pts = {"A": (0.1, 0.5), "B": (0.2, 0.7), "C": (0.3, 0.6), "D": (0.2, 0.65), "E": (0.5, 0.9), "F": (0.5, 0.9),
           "G": (0.05, 0.4), "H": (float("nan"), 1.0), "I": (0.6, 0.9)}
    kl, reward = zip(*pts.values())
    on = dict(zip(pts, A.pareto_front(kl, reward)))
    assert {k for k, v in on.items() if v} == {"A", "B", "E", "F", "G"}  # equal points do not dominate each other


def test_reward_kl_points_front_per_method(df):
    pts = A.reward_kl_points(df)
    cc = pts[pts["task.name"] == "conciseness"]
    assert len(cc) == 24 and (cc["reward_metric"] == "eval_display_reward").all()  # 12 runs x 2 checkpoints
    front = cc[(cc["method"] == "grpo") & cc["on_front"]]
    assert sorted(zip(front["kl"], front["reward"].round(6))) == [(0.6, 0.9), (1.2, 0.95)]
    assert len(pts[pts["task.name"] == "countdown"]) == 13 * 2  # finished runs only, base (step 0) left out
    final = A.reward_kl_points(df, points="final")
    assert len(final) == 25


def test_curves_mean_std_over_seeds_on_samples(df):
    c = A.curves(df)
    es = c[(c["task.name"] == "countdown") & (c["method"] == "es")]
    spp = F.KNOWN["es_samples_per_step"]
    assert list(es["samples"]) == [spp * t for t in (1, 2, 3, 4)] and (es["n"] == 3).all()
    for t, (m, s) in zip((1, 2, 3, 4), zip(es["mean"], es["std"])):
        assert (m, s) == (pytest.approx(F.KNOWN["es_curve"](t)[0]), pytest.approx(F.KNOWN["es_curve"](t)[1]))
    assert set(c[c["method"] == "grpo"]["n"]) == {2, 4}  # 2 seeds per countdown grid point, 4 for conciseness


def test_curves_align_runs_logged_at_different_samples(tmp_path):
    cfg = F.run_config("es", "m", "t", 0)
    for name, seed, points in (("a", 0, [(0, 0), (10, 1), (20, 2)]), ("b", 1, [(5, 0), (15, 2), (25, 4)])):
        records = [F.train(i + 1, s, y) for i, (s, y) in enumerate(points)]
        F.write_run(tmp_path / name, "es", {**cfg, "seed": seed}, records)
    c = A.curves(A.load_runs(tmp_path))
    assert list(c["samples"]) == [5, 10, 15, 20]  # the union of x values inside the range both runs cover
    np.testing.assert_allclose(c["mean"], [0.25, 1.0, 1.75, 2.5])  # a: 0.5 1 1.5 2, b: 0 1 2 3 (interpolated)
    np.testing.assert_allclose(c["std"], np.std([[0.5, 1, 1.5, 2], [0, 1, 2, 3]], axis=0, ddof=1))


def test_training_seconds_add_up_the_generations_and_curves_compare_at_equal_time(tmp_path):
    """train_s: the sum of the generations' time_total up to a step (evaluations take none); eval_reward against it
    compares two methods at equal wall-clock (results/wallclock_lowrank/)."""
    cfg = F.run_config("es", "m", "t", 0)
    fast = [F.evaluation(0, 0, 0.0, -6.0, None), F.train(1, 8, 0.0, 5.0), F.train(2, 16, 0.0, 7.0),
            F.evaluation(2, 16, 0.0, -2.0, None)]
    slow = [F.evaluation(0, 0, 0.0, -6.0, None), F.train(1, 8, 0.0, 12.0), F.evaluation(1, 8, 0.0, -5.0, None)]
    F.write_run(tmp_path / "fast", "es", {**cfg, "seed": 0}, fast)
    F.write_run(tmp_path / "slow", "es", {**cfg, "seed": 1, "es": {**cfg["es"], "population": 99}}, slow)
    df = A.load_runs(tmp_path)
    assert df.sort_values(["run_dir", "step"])["train_s"].tolist() == [0.0, 5.0, 12.0, 0.0, 12.0]
    c = A.curves(df, "eval_reward", "train_s").sort_values(["label", "train_s"])
    # two settings, one seed each, on the range both cover (0-12 s): each run's evaluations interpolated
    assert sorted(set(c["train_s"])) == [0.0, 12.0]
    assert c.groupby("train_s")["mean"].apply(sorted).to_dict() == {0.0: [-6.0, -6.0], 12.0: [-5.0, -2.0]}


def test_figures_carry_the_regenerate_command(df, tmp_path):
    fig = A.plot_reward_vs_kl(A.reward_kl_points(df), command="CMD-1")
    assert any("Regenerate: CMD-1" in t.get_text() for t in fig.texts)
    png, pdf = A.save_figure(fig, tmp_path / "f", "CMD-1")
    assert Image.open(png).info["Description"] == "Regenerate: CMD-1"
    assert b"Regenerate: CMD-1" in pdf.read_bytes()
    fig = A.plot_learning_curves(A.curves(df, "eval_accuracy"), "eval_accuracy", command="CMD-2")
    assert len(fig.axes) == 2 and any("CMD-2" in t.get_text() for t in fig.texts)


# Command line ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_makes_every_artifact(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert A.main([str(tree), "--out", str(out)]) == 0
    cmd = f"python -m es_repro.analysis {tree} --out {out}"
    names = {"runs.csv", "table1.csv", "table1.md", "table1.tex", "stability.csv", "stability.md", "stability.tex"}
    for fig in ("reward_vs_kl", "learning_curves", "learning_curves_accuracy", "eval_reward_vs_time"):
        names |= {f"{fig}.png", f"{fig}.pdf", f"{fig}.csv"}
        assert Image.open(out / f"{fig}.png").info["Description"] == f"Regenerate: {cmd}"
    assert {p.name for p in out.iterdir()} == names
    for name in ("table1.md", "table1.tex", "stability.md", "stability.tex"):
        assert cmd in (out / name).read_text(), name
    assert "skipped" not in capsys.readouterr().out


def test_cli_skips_artifacts_whose_runs_are_absent(tmp_path, capsys):
    cfg = F.run_config("es", "m", "countdown", 0)
    F.write_run(tmp_path / "runs" / "r", "es", cfg, [F.evaluation(0, 0, 0.1, 0.1, None), F.train(1, 5, 0.3),
                                                   F.evaluation(1, 5, 0.2, 0.2, None)])
    out = tmp_path / "out"
    assert A.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped reward_vs_kl: reward vs KL: no run logged eval_kl" in printed
    assert (out / "table1.md").is_file() and not (out / "reward_vs_kl.png").exists()
    (tmp_path / "empty").mkdir()
    assert A.main([str(tmp_path / "empty"), "--out", str(out)]) == 2


def test_stability_rows_that_differ_beyond_beta_alpha_sigma_say_how(tmp_path):
    """Two ES settings with the same alpha and sigma (here: rank 0 vs 4) get an 'other' column telling them apart;
    each row's numbers are its own runs' mean and std."""
    for rank, kls in ((0, (0.1, 0.3)), (4, (0.5, 0.9))):
        for seed, kl in enumerate(kls):
            F.write_run(tmp_path / f"r{rank}s{seed}", "es", F.run_config("es", "m", "synthetic", seed, es={"lowrank": rank}),
                        [F.train(1, 8, 0.5), F.evaluation(1, 8, 0.0, 0.5 + seed, kl)])
    st = A.stability_table(A.load_runs(tmp_path)).set_index("other")
    assert sorted(st.index) == ["lowrank=0", "lowrank=4"]
    assert st.loc["lowrank=4", "kl_mean"] == pytest.approx(0.7) and st.loc["lowrank=4", "kl_std"] == pytest.approx(0.2828427)
    assert st.loc["lowrank=0", "reward_mean"] == pytest.approx(1.0) and st.loc["lowrank=0", "n"] == 2
    md = A.stability_markdown(A.stability_table(A.load_runs(tmp_path)))
    assert "| other |" in md and "| lowrank=4 |" in md
    # Without such differences the column is not shown.
    assert "| other |" not in A.stability_markdown(A.stability_table(A.load_runs(tmp_path / "r0s0", tmp_path / "r0s1")))


def test_a_key_missing_from_older_runs_does_not_count_as_varied():
    from es_repro.analysis.select import varying_keys

    old = json.dumps({"es.sigma": 0.001})
    new = json.dumps({"es.sigma": 0.01, "es.reuse_pair_noise": True})
    newer = json.dumps({"es.sigma": 0.01, "es.reuse_pair_noise": False})
    assert varying_keys([old, new]) == ["es.sigma"]
    assert varying_keys([old, new, newer]) == ["es.reuse_pair_noise", "es.sigma"]
