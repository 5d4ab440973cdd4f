"""The figure notebooks' tables and README text, on hand-made runs with known answers."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dpo_core import report, results
from dpo_core.stats import mean_interval
from dpo_core.tiny import byte_tokenizer


def write_samples(root, notebook, run, rows):
    """A finished-looking run directory under root/p holding only samples.jsonl."""
    path = results.run_dir(root, "p", notebook, run)
    results.save_jsonl(path / "samples.jsonl", rows)
    return path


def test_trajectories_by_step_and_best_of_n_by_n(tmp_path):
    write_samples(tmp_path, "04_imdb_dpo_and_baselines", "dpo", [
        {"step": s, "kl": s / 10, "reward": r} for s in (10, 0) for r in (0.2, 0.4)])
    write_samples(tmp_path, "07_imdb_best_of_n", "main", [{"setting": n, "reward": 0.5} for n in (4, 4, 1, 1)])
    frame = pd.DataFrame({"notebook": ["04_imdb_dpo_and_baselines"] * 2 + ["07_imdb_best_of_n"],
                          "run": ["dpo", "dpo", "main"]})
    runs = report.trajectories(tmp_path, "p", frame)
    assert list(runs) == ["dpo", "main"]
    assert list(runs["dpo"]["step"]) == [0, 10] and runs["dpo"]["kl"].tolist() == [[0, 0], [1, 1]]
    assert list(runs["main"]["setting"]) == [1, 4]
    np.testing.assert_allclose(runs["main"]["kl"][1], math.log(4) - 3 / 4)  # Best-of-N: the analytic bound


def test_with_intervals_matches_each_point_by_step_or_by_n():
    rng = np.random.default_rng(0)
    runs = {"dpo": {"step": np.array([0, 10]), "reward": rng.uniform(size=(2, 20))},
            "main": {"setting": np.array([1, 4]), "reward": rng.uniform(size=(2, 20))}}
    frame = pd.DataFrame({"run": ["dpo", "dpo", "main", "main"], "method": ["dpo", "dpo", "best_of_n", "best_of_n"],
                          "step": [10, 0, 0, 0], "setting": [0.1, 0.1, 4.0, 1.0]})
    out = report.with_intervals(frame, runs, 200)
    for row, (run, i) in zip(out.itertuples(), [("dpo", 1), ("dpo", 0), ("main", 1), ("main", 0)]):
        _, low, high = mean_interval(runs[run]["reward"][i], 200)
        assert (row.reward_low, row.reward_high) == (low, high)


def point(method, setting, run, step, kl=0.0, reward=0.5):
    return {"method": method, "setting": setting, "run": run, "step": step, "kl": kl, "kl_sampled": kl,
            "reward": reward, "reward_low": reward - 0.1, "reward_high": reward + 0.1, "completion_tokens": 8.0,
            "distinct_2": 1.0, "reference_nll": 5.0, "entropy": 4.5, "notebook": "x", "point": step}


def test_final_points_last_step_of_each_run_and_every_n():
    frame = pd.DataFrame([point("dpo", 0.1, "dpo", 10), point("dpo", 0.1, "dpo", 20, 2.0), point("dpo", 0.1, "dpo", 0),
                          point("ppo", 6.0, "ppo", 5, 5.0), point("ppo", 6.0, "ppo", 0),
                          point("best_of_n", 4.0, "main", 0), point("best_of_n", 1.0, "main", 0)])
    final = report.final_points(frame)
    assert list(final.columns) == report.FINAL_COLUMNS
    assert list(zip(final.method, final.setting, final.step)) == [("best_of_n", 1.0, 0), ("best_of_n", 4.0, 0),
                                                                  ("dpo", 0.1, 20), ("ppo", 6.0, 5)]
    ppo = report.ppo_against_target(pd.concat([final, pd.DataFrame([point("ppo_gt", 2.0, "gt", 5, 3.0)])]))
    assert list(ppo.columns) == report.PPO_COLUMNS and list(ppo.run) == ["ppo", "gt"]
    assert ppo.kl_over_target.tolist() == pytest.approx([5 / 6, 1.5]) and ppo["within_25%"].tolist() == [True, False]


def test_loop_shares_at_each_trained_runs_last_evaluation(tmp_path):
    write_samples(tmp_path, "04_imdb_dpo_and_baselines", "dpo", [
        {"step": 0, "distinct_2": 1.0, "reward": 0.5, "reference_nll": 4.0},
        {"step": 10, "distinct_2": 0.3, "reward": 0.9, "reference_nll": 1.0},  # a loop
        {"step": 10, "distinct_2": 0.9, "reward": 0.6, "reference_nll": 3.0}])
    frame = pd.DataFrame({"notebook": ["04_imdb_dpo_and_baselines", "07_imdb_best_of_n"], "run": ["dpo", "main"],
                          "method": ["dpo", "best_of_n"]})  # Best-of-N has no samples to read: left out
    loops = report.loop_shares(tmp_path, "p", frame)
    assert list(loops.columns) == report.LOOP_COLUMNS
    assert loops.iloc[0].to_dict() == pytest.approx({"run": "dpo", "method": "dpo", "step": 10, "loops": 0.5,
                                                     "reward_loops": 0.9, "reward_rest": 0.6, "reference_nll": 2.0})


def frontier_text(ppo, at_kl):
    final = pd.DataFrame([point("dpo", 0.1, "dpo_beta-0.1", 10, 1.5, 0.75)])[report.FINAL_COLUMNS]
    loops = pd.DataFrame([{"run": "dpo_beta-0.1", "method": "dpo", "step": 10, "loops": 0.25, "reward_loops": 0.9,
                           "reward_rest": 0.7, "reference_nll": 3.0}])
    comparisons = pd.DataFrame([{"run": "ipo", "method": "ipo", "gap": 0.05, "low": 0.01, "high": 0.09, "kl_low": 0.0,
                                 "kl_high": 2.0, "p_below_zero": 0.0, "verdict": "dpo_beta-0.1 higher"}])
    stages = [("02_imdb_sft", "main", 30.0), ("04_x", "a", 60.0)]
    return report.frontier_readme("fig", "cpu", 64, 500, ["04_x/b"], stages,
                                  final, reference_reward=0.5, reference_loops=0.125, loops=loops, ppo=ppo,
                                  reference_run="dpo_beta-0.1", comparisons=comparisons, at_kl=at_kl,
                                  compare_at_kl=[1.0, 2.0])


def test_frontier_readme_holds_the_tables_rows():
    ppo = pd.DataFrame([{"run": "ppo", "target": 6.0, "step": 5, "kl": 5.0, "kl_over_target": 5 / 6, "within_25%": True,
                         "reward": 0.6}])
    at_kl = pd.DataFrame([{"run": "ipo", "method": "ipo", "kl": 1.0, "gap": 0.02, "low": -0.01, "high": 0.05,
                           "verdict": "no difference"}])
    text = frontier_text(ppo, at_kl)
    assert text.startswith("# figures/\n\nRegenerated by `notebooks/08_fig_reward_kl_frontier.ipynb`")
    for line in ["## fig.png / .pdf: Fig. 2 (left), reward vs KL on IMDb sentiment",
                 "over 64 held-out prefixes,", "over prompts (500 draws)\n",
                 "- unfinished runs left out of the figure: 04_x/b",
                 "| 02_imdb_sft | main | 0.500 |", "| 04_x | a | 1.000 |", "Total: 1.5 minutes.",
                 "| dpo | 0.100 | dpo_beta-0.1 | 10 | 1.500 | 1.500 | 0.750 | 0.650 | 0.850 | 8.000 | 1.000 | 5.000 | 4.500 |",
                 "reward 0.500. completion_tokens, distinct_2 (share of\n", 'e.g. ". . . ."; pi_ref: 0.125),\n',
                 "| dpo_beta-0.1 | dpo | 10 | 0.250 | 0.900 | 0.700 | 3.000 |",
                 "| ppo | 6.000 | 5 | 5.000 | 0.833 | True | 0.600 |",
                 "Paired comparisons: `dpo_beta-0.1`'s reward minus",
                 "| ipo | ipo | 0.050 | 0.010 | 0.090 | 0.000 | 2.000 | dpo_beta-0.1 higher |",
                 "at each KL of [1.0, 2.0] that both runs reach:",
                 "| ipo | ipo | 1.000 | 0.020 | -0.010 | 0.050 | no difference |"]:
        assert line in text, line
    assert "p_below_zero" not in text
    assert "Best-of-N" not in text  # no Best-of-N run (the quick profile): no line about its KL
    final = pd.concat([pd.DataFrame([point("dpo", 0.1, "dpo_beta-0.1", 10, 1.5, 0.75)]),
                       pd.DataFrame([point("best_of_n", 4.0, "main", 0, 0.636, 0.6)])])[report.FINAL_COLUMNS]
    with_best_of_n = report.frontier_readme("fig", "cpu", 64, 500, [], [], final, reference_reward=0.5,
                                            reference_loops=0.0, loops=pd.DataFrame(columns=report.LOOP_COLUMNS),
                                            ppo=ppo, reference_run="dpo_beta-0.1", comparisons=pd.DataFrame(),
                                            at_kl=at_kl, compare_at_kl=[1.0])
    assert "(500 draws); Best-of-N's KL is the analytic bound log N - (N-1)/N\n" in with_best_of_n
    empty = frontier_text(pd.DataFrame(), pd.DataFrame())
    assert "(no PPO runs)" in empty and "(no shared KLs)" in empty and "(no other runs)" not in empty


def test_win_rate_section_and_its_splice_into_the_readme(tmp_path):
    by_temperature = pd.DataFrame({"method": ["dpo", "dpo", "sft", "sft"], "setting": [0.1, 0.1, 0.0, 0.0],
                                   "temperature": [0.0, 1.0, 0.0, 1.0], "win_rate": [0.25, 0.75, 0.5, 0.125],
                                   "n": [4, 4, 4, 4]})
    by_step = pd.DataFrame({"method": ["dpo"], "setting": [0.1], "step": [10], "win_rate": [0.5], "stderr": [0.1],
                            "n_tie": [1]})
    section = report.win_rate_section("gold-reward", 8, by_temperature, by_step, ["09_x/a"],
                                      [("09_imdb_win_rates", "a", 60.0), ("10_fig_win_rates", "main", 120.0)])
    assert section.startswith(report.WIN_RATE_MARK + "\n\n## winrate_temperature.png")
    for line in ["- judge: `gold-reward`:", "own next 8 tokens at most);", "ties count half; 4 held-out prompts;",
                 "- unfinished runs left out: 09_x/a", "| method | setting | T=0 | T=1 |",
                 "| dpo | 0.100 | 0.250 | 0.750 |",
                 "| sft | 0.000 | 0.500 | 0.125 |", "| setting | step | win_rate | stderr | n_tie |",
                 "| 0.100 | 10 | 0.500 | 0.100 | 1 |", "3.0 minutes over 2 runs."]:
        assert line in section, line
    readme = tmp_path / "README.md"
    assert report.with_section(readme, section) == "# figures/\n\n" + section  # no README yet
    readme.write_text("# figures/\n\nthe frontier\n\n" + report.WIN_RATE_MARK + "\n\nan old section\n")
    assert report.with_section(readme, section) == "# figures/\n\nthe frontier\n\n" + section
    readme.write_text("# figures/\n\nthe frontier\n")
    assert report.with_section(readme, section) == "# figures/\n\nthe frontier\n\n" + section


class FirstWordJudge:
    """Wins on "good", ties on "meh", else loses; records what it was asked."""

    def __init__(self):
        self.calls = []

    def judge(self, contexts, candidates, references):
        self.calls.append((contexts, candidates, references))
        return ["win" if c == "good" else "tie" if c == "meh" else "loss" for c in candidates]


def test_win_rates_over_training_judge_each_step_of_each_seed_0_dpo_run(tmp_path):
    notebook = "04_imdb_dpo_and_baselines"
    write_samples(tmp_path, notebook, "dpo_beta-0.1", [{"step": s, "text": t} for s, t in
                                                        [(0, "good"), (0, "bad"), (10, "meh"), (10, "good")]])
    write_samples(tmp_path, notebook, "dpo_beta-0.5_seed-1", [{"step": 0, "text": "bad"}] * 2)
    dpo_runs = pd.DataFrame({"run": ["dpo_beta-0.1", "dpo_beta-0.1", "dpo_beta-0.5_seed-1", "ipo"],
                             "method": ["dpo", "dpo", "dpo", "ipo"], "seed": [0, 0, 1, 0],
                             "setting": [0.1, 0.1, 0.5, 0.1]})
    judge = FirstWordJudge()
    table = report.win_rates_over_training(tmp_path, "p", dpo_runs, judge, ["ref a", "ref b"])
    assert table[["method", "setting", "step", "win_rate", "n_tie"]].to_dict("records") == [
        {"method": "dpo", "setting": 0.1, "step": 0, "win_rate": 0.5, "n_tie": 0},
        {"method": "dpo", "setting": 0.1, "step": 10, "win_rate": 0.75, "n_tie": 1}]
    assert judge.calls[1] == (["", ""], ["meh", "good"], ["ref a", "ref b"])
    with pytest.raises(ValueError, match="one per test prompt"):
        report.win_rates_over_training(tmp_path, "p", dpo_runs, judge, ["ref a"])


def test_held_out_texts_decode_prefix_and_continuation(tmp_path):
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(tmp_path / "model")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("A great", " film.", "Dull", " plot")]
    prefs = SimpleNamespace(sft_dir=tmp_path, test_prompts=[ids[0], ids[2]], test_references=[ids[1], ids[3]])
    assert report.held_out_texts(prefs) == ["A great film.", "Dull plot"]


def test_paired_win_rates_pair_each_policy_with_dpo_prompt_by_prompt(tmp_path):
    notebook = "09_imdb_win_rates"
    refs = ["r0", "r1", "r2", "r3"]
    rows = lambda verdicts: [{"temperature": t, "reference": r, "verdict": v}
                             for t in (0.0, 1.0) for r, v in zip(refs, verdicts)]
    write_samples(tmp_path, notebook, "dpo_beta-0.1", rows(["win", "win", "tie", "loss"]))
    write_samples(tmp_path, notebook, "sft", rows(["loss", "win", "loss", "loss"]))
    by_temperature = pd.DataFrame({"run": ["dpo_beta-0.1", "sft"], "method": ["dpo", "sft"]})
    table = report.paired_win_rates(tmp_path, "p", by_temperature, draws=200)
    assert list(table.temperature) == [0.0, 1.0] and set(table.run) == {"sft"}
    assert table.gap.tolist() == pytest.approx([(1 + 0 + 0.5 + 0) / 4] * 2)
    assert (table.low <= table.gap).all() and (table.gap <= table.high).all()
    section = report.win_rate_section("gold-reward", 8, pd.DataFrame({
        "method": ["dpo"], "setting": [0.1], "temperature": [0.0], "win_rate": [0.5], "n": [4]}),
        pd.DataFrame(columns=["setting", "step", "win_rate", "stderr", "n_tie"]), [], [], table)
    assert "DPO's win rate minus each policy's, paired over the same prompts" in section
    assert "| sft | sft | 0.000 | 0.375 |" in section
    write_samples(tmp_path, notebook, "sft", [{**r, "reference": "other"} for r in rows(["win"] * 4)])
    with pytest.raises(ValueError, match="same references"):
        report.paired_win_rates(tmp_path, "p", by_temperature)
    no_dpo = report.paired_win_rates(tmp_path, "p", by_temperature[by_temperature.method == "sft"])
    assert no_dpo.empty


def linear_run(root, run, kl_per_step, reward_of_kl, steps=(0, 10, 20), prompts=40, seed=0):
    """A finished-looking run whose every prompt sits at KL kl_per_step * step and reward
    reward_of_kl(kl) plus per-prompt noise shared by every run of the same seed (paired)."""
    noise = np.random.default_rng(seed).normal(0, 0.05, prompts)
    rows, metrics = [], []
    for s in steps:
        kl = kl_per_step * s
        rows += [{"step": s, "kl": kl, "reward": reward_of_kl(kl) + noise[i]} for i in range(prompts)]
        metrics.append({"step": s, "kl": kl, "reward": reward_of_kl(kl) + noise.mean(), "completion_tokens": 8.0,
                        "entropy": 3.0 - s / 100, "reference_nll": 4.0, "distinct_2": 1.0})
    path = write_samples(root, "04_imdb_dpo_and_baselines", run, rows)
    results.save_rows(path / "metrics.csv", metrics)
    return path


def test_paired_gap_rows_find_a_known_constant_gap_and_no_gap_between_twins(tmp_path):
    """a = b + 0.1 at every KL, with the same per-prompt noise: the gap is 0.1 exactly, its interval
    tight around it, over the range and at each KL both reach; a run against its twin: no difference."""
    from dpo_core import imdb
    a = linear_run(tmp_path, "a", 0.2, lambda kl: 0.5 + 0.05 * kl + 0.1)  # KL 0 .. 4
    b = linear_run(tmp_path, "b", 0.1, lambda kl: 0.5 + 0.05 * kl)  # KL 0 .. 2
    twin = linear_run(tmp_path, "twin", 0.1, lambda kl: 0.5 + 0.05 * kl)
    t = {name: imdb.trajectory(path) for name, path in (("a", a), ("b", b), ("twin", twin))}
    gaps = report.paired_gap_rows(t, [("a", "b"), ("b", "twin")], [1.0, 2.0, 4.0], draws=200)
    ab = gaps[gaps.b == "b"]
    assert list(ab.kl) == ["0.00-2.00", "1", "2"]  # KL 4: b never reaches it
    np.testing.assert_allclose(ab.gap, 0.1, atol=1e-12)
    assert (ab.verdict == "a higher").all()
    twins = gaps[gaps.b == "twin"]
    np.testing.assert_allclose(twins.gap, 0.0, atol=1e-12)
    assert (twins.verdict == "no difference").all()


def test_budget_matched_rows_cut_the_offline_run_at_the_ppo_runs_sequences(tmp_path):
    """PPO: 3 iterations x 8 rollouts x 2 epochs = 48 sequences through backward; an offline run of
    batch 2 (4 sequences a step) gets 12 steps, so of its evaluations at 0, 10, 20 only 0 and 10 count:
    it reaches KL 1 within the budget, the gap is read on 0..1 only, where a = b + 0.1."""
    from dpo_core import imdb
    a = linear_run(tmp_path, "a", 0.1, lambda kl: 0.6 + 0.05 * kl)
    b = linear_run(tmp_path, "b", 0.1, lambda kl: 0.5 + 0.05 * kl)
    results.save_json(a / "params.json", {"batch_size": 2})
    results.save_json(b / "params.json", {"n_steps": 3, "prompts_per_step": 8, "ppo_epochs": 2})
    t = {name: imdb.trajectory(path) for name, path in (("a", a), ("b", b))}
    rows = report.budget_matched_rows(t, {"a": a, "b": b}, [("a", "b")], [1.0, 2.0], draws=200)
    assert list(rows.kl) == ["0.00-1.00", "1"]  # KL 2 lies beyond a's budget
    assert (rows.budget_steps == 12).all() and (rows.budget_step == 10).all()
    np.testing.assert_allclose(rows.a_kl_reach, 1.0)
    np.testing.assert_allclose(rows.b_kl_reach, 2.0)
    np.testing.assert_allclose(rows.gap, 0.1, atol=1e-12)
    assert report.within_budget(t["a"], 9)["step"].tolist() == [0]
    results.save_json(a / "params.json", {"batch_size": 8})  # 6 steps: no evaluation after pi_ref's
    short = report.budget_matched_rows(t, {"a": a, "b": b}, [("a", "b")], [1.0], draws=200)
    assert short.verdict.tolist() == ["no evaluation within the budget"] and short.gap.isna().all()


def test_evaluation_rows_and_scaling_rows(tmp_path):
    from dpo_core import imdb
    small = linear_run(tmp_path, "small", 0.1, lambda kl: 0.5)
    large = linear_run(tmp_path, "large", 0.1, lambda kl: 0.6)
    ppo = linear_run(tmp_path, "ppo", 0.1, lambda kl: 0.55)
    rows = report.evaluation_rows({"small": small}, draws=200)
    assert list(rows.step) == [0, 10, 20] and list(rows.entropy) == [3.0, 2.9, 2.8]
    assert (rows.reward_low < rows.reward).all() and (rows.reward < rows.reward_high).all()
    t = {name: imdb.trajectory(path) for name, path in (("small", small), ("large", large), ("ppo", ppo))}
    scaling = report.scaling_rows(t, {"small": (192, 1152), "large": (768, 4608)}, "ppo", [1.0], draws=200)
    at_1 = scaling[scaling.kl == "1"].set_index("run")
    np.testing.assert_allclose(at_1.loc["small", "gap"], -0.05, atol=1e-12)
    np.testing.assert_allclose(at_1.loc["large", "gap"], 0.05, atol=1e-12)
    assert at_1.loc["large", "pairs"] == 4608 and at_1.loc["small", "verdict"] == "a lower"


def test_study_run_dir_prefers_the_study_tree_and_creates_nothing(tmp_path):
    study, figure = tmp_path / "study", tmp_path / "figure"
    spec = "04_imdb_dpo_and_baselines/x"
    assert report.study_run_dir(study, figure, "p", spec) == study / "p" / spec and not study.exists()
    (figure / "p" / spec).mkdir(parents=True)
    (figure / "p" / spec / "FINISHED").touch()
    assert report.study_run_dir(study, figure, "p", spec) == figure / "p" / spec
    (study / "p" / spec).mkdir(parents=True)
    assert report.study_run_dir(study, figure, "p", spec) == figure / "p" / spec  # the study's is unfinished
    (study / "p" / spec / "FINISHED").touch()
    assert report.study_run_dir(study, figure, "p", spec) == study / "p" / spec
    runs = {spec: study / "p" / spec, "06_imdb_ppo/y": figure / "p" / "06_imdb_ppo" / "y"}
    assert report.study_tree_runs(study, "p", runs).values.tolist() == [["04_imdb_dpo_and_baselines", "x"]]


def test_compute_rows_from_run_params_against_hand_computed_counts(tmp_path):
    """A DPO run of 120 steps of 8 pairs and a PPO-GT run of 30 iterations of 32 rollouts, 2 epochs:
    1,920 sequences through backward each; gold queries 192 x 4 (the pairs' labels) and 960 + 256."""
    import torch
    from safetensors.torch import save_file
    model = tmp_path / "p" / "02_imdb_sft" / "main" / "model"
    model.mkdir(parents=True)
    save_file({"model.embed_tokens.weight": torch.zeros(10, 2), "model.layers.0.w": torch.zeros(3, 2)},
              str(model / "model.safetensors"))
    (model / "config.json").write_text('{"hidden_size": 2, "vocab_size": 10}')
    results.save_json(model.parent / "params.json", {})
    (model.parent / "FINISHED").touch()
    prefs = tmp_path / "p" / "03_imdb_preferences" / "main"
    results.save_json(prefs / "params.json", {"sft_run": "main", "min_prefix_tokens": 2, "max_prefix_tokens": 8,
                                              "max_new_tokens": 32, "n_prompts": 192, "completions_per_prompt": 4})
    (prefs / "FINISHED").touch()
    runs = {("04_imdb_dpo_and_baselines", "dpo"): {"method": "dpo", "n_steps": 120, "batch_size": 8},
            ("06_imdb_ppo", "gt"): {"method": "ppo_gt", "n_steps": 30, "prompts_per_step": 32, "ppo_epochs": 2,
                                   "minibatch_size": 16, "n_normalization_samples": 256, "max_new_tokens": 32}}
    for (notebook, run), params in runs.items():
        results.save_json(results.run_dir(tmp_path, "p", notebook, run) / "params.json",
                          {"preferences_run": "main", **params})
    frame = pd.DataFrame({"notebook": ["04_imdb_dpo_and_baselines", "06_imdb_ppo", "07_imdb_best_of_n"],
                          "run": ["dpo", "gt", "main"]})
    rows = report.compute_rows(tmp_path, "p", frame, [("04_imdb_dpo_and_baselines", "dpo", 600.0)]).set_index("run")
    assert list(rows.index) == ["dpo", "gt"]  # Best-of-N trains nothing
    assert rows.loc["dpo", "backward_sequences"] == rows.loc["gt", "backward_sequences"] == 1920
    assert rows.loc["dpo", "gold_queries"] == 768 and rows.loc["gt", "gold_queries"] == 1216
    assert rows.loc["dpo", "optimizer_steps"] == 120 and rows.loc["gt", "optimizer_steps"] == 120
    assert rows.loc["dpo", "wall_minutes"] == 10.0 and math.isnan(rows.loc["gt", "wall_minutes"])
    # 26 weights, 20 of them the embedding: 2 * 6 + 2 * 2 * 10 = 52 FLOPs a token; 37 tokens a sequence
    assert rows.loc["dpo", "tflops"] == pytest.approx(1920 * 37 * 52 * 4 / 1e12)


def test_training_set_rows_count_the_first_prompts_pairs_and_their_gaps(tmp_path):
    import datasets
    prefs = tmp_path / "p" / "03_imdb_preferences" / "big"
    prefs.mkdir(parents=True)
    (prefs / "FINISHED").touch()
    datasets.Dataset.from_dict({"prompt_ids": [[1], [1], [2], [2], [3]],
                                "chosen_reward": [1.0, 0.75, 0.5, 0.5, 1.0],
                                "rejected_reward": [0.0, 0.5, 0.25, 0.375, 0.0]}).save_to_disk(str(prefs / "pairs"))
    small = results.run_dir(tmp_path, "p", "04_imdb_dpo_and_baselines", "small")
    results.save_json(small / "params.json", {"preferences_run": "big", "n_train_prompts": 2})
    whole = results.run_dir(tmp_path, "p", "04_imdb_dpo_and_baselines", "whole")
    results.save_json(whole / "params.json", {"preferences_run": "big", "n_train_prompts": 0})
    rows = report.training_set_rows({"small": small, "whole": whole}, tmp_path / "none", tmp_path, "p").set_index("run")
    assert rows.loc["small", "prompts"] == 2 and rows.loc["small", "pairs"] == 4
    assert rows.loc["whole", "prompts"] == 3 and rows.loc["whole", "pairs"] == 5
    assert rows.loc["small", "gap_median"] == 0.25  # gaps 1, 0.25, 0.25, 0.125
    assert rows.loc["whole", "gap_median"] == 0.25 and rows.loc["whole", "gap_under_0.05"] == 0.0


def test_held_out_accuracy_rows_read_the_last_evaluation_and_the_reward_model(tmp_path):
    dpo = results.run_dir(tmp_path, "p", "04_imdb_dpo_and_baselines", "d")
    results.save_rows(dpo / "metrics.csv", [
        {"step": 10, "eval_accuracy": 0.6, "eval_accuracy_low": 0.5, "eval_accuracy_high": 0.7},
        {"step": 0, "eval_accuracy": 0.0, "eval_accuracy_low": 0.0, "eval_accuracy_high": 0.0}])
    (dpo / "FINISHED").touch()
    rm = results.run_dir(tmp_path, "p", "05_imdb_reward_model", "r")
    results.save_rows(rm / "metrics.csv", [{"held_out_accuracy": 0.55, "held_out_accuracy_low": 0.45,
                                            "held_out_accuracy_high": 0.65, "held_out_pairs": 576}])
    (rm / "FINISHED").touch()
    unfinished = results.run_dir(tmp_path, "p", "05_imdb_reward_model", "u")
    rows = report.held_out_accuracy_rows({"d": dpo}, {"d": rm, "u": unfinished})
    assert rows.to_dict("records")[0] == {"run": "d", "proxy": "DPO implicit reward", "pairs": pytest.approx(math.nan, nan_ok=True),
                                          "accuracy": 0.6, "low": 0.5, "high": 0.7}
    assert len(rows) == 2 and rows.iloc[1].accuracy == 0.55 and rows.iloc[1].pairs == 576
