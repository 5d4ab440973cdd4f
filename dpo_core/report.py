"""The figure notebooks' tables and the text of figures/README.md (notebooks 08 and 10): what the
figures show, read back from finished result files only, and the record of what made them.

    trajectories(...)             every run's evaluations per prompt (`imdb.trajectory`), by run
    with_intervals(frame, ...)    the frontier's points with their 95% intervals over prompts
    final_points(frame)           the last evaluation of every run (every N for Best-of-N)
    ppo_against_target(final)     PPO's final KL against its target
    loop_shares(...)              looping completions at each trained run's last evaluation
    frontier_readme(...)          figures/README.md as notebook 08 writes it
    held_out_texts(prefs)         the held-out prefixes with their reviews' own continuations, as text
    win_rates_over_training(...)  Fig. 3 (right): each DPO run's win rate at each evaluation
    win_rate_section(...)         notebook 10's section of figures/README.md
    with_section(path, section)   the README with that section replaced (or appended)
    compute_rows(...)             what each trained run got: gold queries, steps, sequences, FLOPs, time
    study_run_dir(...)            a run of the study tree (`make study`), else of the figure's tree
    paired_gap_rows(...)          a minus b paired at matched KL, over the shared range and at given KLs
    evaluation_rows(...)          every evaluation of some runs with its interval and diagnostics
    scaling_rows(...)             the data-scaling study: per preference-set size, DPO minus PPO-GT
    training_set_rows(...)        each run's training pairs: prompts, pairs, the gold gap's distribution
    held_out_accuracy_rows(...)   DPO's implicit reward and the RM on held-out pairs, with intervals
"""

import datetime
import json
import math
from pathlib import Path

import datasets
import pandas as pd
from safetensors import safe_open
from transformers import AutoTokenizer

from dpo_core import budget, data, imdb, judges, results, stats

FINAL_COLUMNS = ["method", "setting", "run", "step", "kl", "kl_sampled", "reward", "reward_low", "reward_high",
                 "completion_tokens", "distinct_2", "reference_nll", "entropy"]
PPO_COLUMNS = ["run", "target", "step", "kl", "kl_over_target", "within_25%", "reward"]
LOOP_COLUMNS = ["run", "method", "step", "loops", "reward_loops", "reward_rest", "reference_nll"]
WIN_RATE_MARK = "<!-- win rates: written by notebooks/10_fig_win_rates.ipynb -->"


def trajectories(results_root, profile, frame):
    """{run: `imdb.trajectory`} for every run of `frame` (`results.load_metrics` of notebooks 04, 06
    and 07): the per-prompt rewards and KLs that intervals and paired comparisons resample. Best-of-N
    (notebook 07) by N, every trained run by step."""
    return {run: imdb.trajectory(results.run_dir(results_root, profile, notebook, run),
                                 "setting" if notebook == "07_imdb_best_of_n" else "step")
            for notebook, run in frame[["notebook", "run"]].drop_duplicates().itertuples(index=False)}


def with_intervals(frame, trajectories, draws):
    """`frame` with each point's 95% bootstrap interval over prompts (`stats.point_intervals`) as
    reward_low and reward_high, matched on run and point (Best-of-N: its N; else the step)."""
    points = frame.assign(point=frame.setting.where(frame.method == "best_of_n", frame.step))
    merged = points.merge(stats.point_intervals(trajectories, draws), on=["run", "point"], how="left")
    merged.attrs = dict(frame.attrs)  # the unfinished runs' list: pandas' merge drops attrs
    return merged


def final_points(frame):
    """The last evaluation of every run and every N of Best-of-N (which trains nothing: each N is its
    own final point), sorted by method and setting, in FINAL_COLUMNS: the numbers behind the README."""
    final = frame.sort_values("step").groupby("run").tail(1)
    final = pd.concat([final[final.method != "best_of_n"], frame[frame.method == "best_of_n"]])
    return final.sort_values(["method", "setting"])[FINAL_COLUMNS]


def ppo_against_target(final):
    """Does PPO's KL controller reach its target? Each PPO and PPO-GT run's final KL over its target
    KL (its setting), and whether that is within 25% of 1. Columns PPO_COLUMNS."""
    ppo = final[final.method.isin(["ppo", "ppo_gt"])].assign(target=lambda f: f.setting,
                                                              kl_over_target=lambda f: f.kl / f.setting)
    ppo["within_25%"] = (ppo.kl_over_target - 1).abs() <= 0.25
    return ppo[PPO_COLUMNS]


def loop_shares(results_root, profile, frame):
    """`imdb.loop_share` at the last evaluation of every trained run of `frame` (Best-of-N trains
    nothing): is a reward gain sentiment, or degenerate text the classifier likes? Columns LOOP_COLUMNS."""
    trained = frame[frame.method != "best_of_n"][["notebook", "run"]].drop_duplicates()
    rows = []
    for notebook, run in trained.itertuples(index=False):
        last = imdb.loop_share(results.run_dir(results_root, profile, notebook, run)).tail(1)
        method = frame[frame.run == run].method.iloc[0]
        rows += [{"run": run, "method": method, "step": step, **row} for step, row in last.to_dict("index").items()]
    return pd.DataFrame(rows)


def _table(frame, columns, empty):
    """`frame`'s rows as a markdown table of `columns`, or the sentence `empty` when it has none."""
    return results.markdown_table(frame.to_dict("records"), columns) if len(frame) else empty


def frontier_readme(fig_name, profile, n_prompts, draws, unfinished, stages, final, *, reference_reward,
                    reference_loops, loops, ppo, reference_run, comparisons, at_kl, compare_at_kl, compute=None,
                    evaluations=None):
    """figures/README.md as notebook 08 writes it: what made Fig. 2 (left) (profile, commit, date,
    how the points and intervals are computed, the runs left out, each stage's wall time from
    `stages`, (notebook, run, seconds)) and its numbers: the final points (`final_points`), pi_ref's
    reward and loop share, `loop_shares`, `ppo_against_target` and `stats.paired_comparisons`'
    two tables of `reference_run` against every other run; `compute_rows` (what each run got under
    the budget rule) and `evaluation_rows` (every evaluation with its diagnostics) when given."""
    compute = pd.DataFrame() if compute is None else compute
    evaluations = pd.DataFrame() if evaluations is None else evaluations
    stage_rows = [{"notebook": n, "run": r, "minutes": s / 60} for n, r, s in stages]
    return f"""# figures/

Regenerated by `notebooks/08_fig_reward_kl_frontier.ipynb`; do not edit by hand.

## {fig_name}.png / .pdf: Fig. 2 (left), reward vs KL on IMDb sentiment

- profile: `{profile}`; commit: `{results.git_commit()}`; made {datetime.date.today().isoformat()}
- every point: mean gold reward and exact sequence-level KL(pi || pi_ref) over {n_prompts} held-out prefixes,
  fresh pure samples with one sampling seed, bars: 95% bootstrap interval over prompts ({draws} draws)\
{"; Best-of-N's KL is the analytic bound log N - (N-1)/N" if (final.method == "best_of_n").any() else ""}
- unfinished runs left out of the figure: {", ".join(unfinished) or "none"}

Wall time of each stage (papermill's record of each run):

{results.markdown_table(stage_rows, ["notebook", "run", "minutes"])}

Total: {sum(s for _, _, s in stages) / 60:.1f} minutes.

Final point of every run:

{results.markdown_table(final.to_dict("records"), FINAL_COLUMNS)}

pi_ref's point (step 0, shared by every trained run): reward {reference_reward:.3f}. \
completion_tokens, distinct_2 (share of
distinct bigrams) and reference_nll (pi_ref's per-token NLL of the samples) say whether a gain is sentiment or gaming.

Looping completions at each run's last evaluation (under 80% of their bigrams distinct, \
e.g. ". . . ."; pi_ref: {reference_loops:.3f}),
the gold reward of those and of the rest:

{results.markdown_table(loops.to_dict("records"), LOOP_COLUMNS)}

PPO against its target KL (within 25% of it counts as reaching it):

{_table(ppo, PPO_COLUMNS, "(no PPO runs)")}

Paired comparisons: `{reference_run}`'s reward minus each run's at matched KL (mean over the shared KL range),
95% bootstrap interval over the same prompts:

{_table(comparisons, ["run", "method", "gap", "low", "high", "kl_low", "kl_high", "verdict"], "(no other runs)")}

The same gap point by point, at each KL of {compare_at_kl} that both runs reach:

{_table(at_kl, ["run", "method", "kl", "gap", "low", "high", "verdict"], "(no shared KLs)")}

What each trained run got (`dpo_core/budget.py`: the budget rule is equal sequences through a backward pass;
gold queries: the preference set's labels for the offline methods, the rollouts' and the reward normaliser's
for PPO-GT; TFLOPs: an estimate of training, 2N forward and 4N backward per token; minutes: the run's wall
time, evaluations included):

{_table(compute, COMPUTE_COLUMNS, "(not computed)")}

Every evaluation of every trained run, with the diagnostics that tell sentiment from gaming: the policy's
per-token entropy at its own samples (it rises when a policy diffuses, falls when it sharpens) and pi_ref's
per-token NLL of them (in expectation the entropy plus the KL per token):

{_table(evaluations, EVALUATION_COLUMNS, "(not computed)")}
"""


def held_out_texts(prefs):
    """Each held-out prefix with its review's own continuation (`imdb.preferences`' test_prompts and
    test_references), decoded as text by pi_ref's tokenizer: what win rates judge a policy against.
    Only the tokenizer is loaded; no model runs."""
    tokenizer = AutoTokenizer.from_pretrained(prefs.sft_dir / "model")
    return imdb.prefixed_texts(tokenizer, prefs.test_prompts, prefs.test_references)


def win_rates_over_training(results_root, profile, dpo_runs, judge, references):
    """Fig. 3 (right): the win rate (`judges.win_rate`) of each DPO run at each of its evaluations, from
    the samples it already drew there (temperature 1, one per test prompt, in samples.jsonl), judged
    against `references`. One line per beta: the seed-0 DPO runs of `dpo_runs` (notebook 04's
    `results.load_metrics`). Returns a DataFrame: method, setting (beta), step and the win-rate columns."""
    first_seed = dpo_runs[(dpo_runs.method == "dpo") & (dpo_runs.seed == 0)]
    rows = []
    for run, beta in first_seed.groupby("run").setting.first().items():
        run_dir = results.run_dir(results_root, profile, "04_imdb_dpo_and_baselines", run)
        for step, group in pd.read_json(run_dir / "samples.jsonl", lines=True).groupby("step"):
            if len(group) != len(references):
                raise ValueError(f"{run}: {len(group)} samples at step {step}, expected one per test prompt")
            verdicts = judge.judge([""] * len(group), group.text.tolist(), references)
            rows.append({"method": "dpo", "setting": beta, "step": step, **judges.win_rate(verdicts)})
    return pd.DataFrame(rows)


def paired_win_rates(results_root, profile, by_temperature, reference_method="dpo", draws=2000):
    """The reference policy's win rate minus every other policy's at each temperature, paired prompt by
    prompt (`stats.paired_win_difference`) on notebook 09's verdicts (samples.jsonl of each run in
    `by_temperature`, `results.load_metrics` of 09). Every run must have judged the same references in
    the same order, else the comparison is refused. Returns a DataFrame: run, method, temperature,
    gap, low, high, verdict."""
    runs = by_temperature.groupby("run").method.first()
    if reference_method not in set(runs):
        return pd.DataFrame(columns=["run", "method", "temperature", "gap", "low", "high", "verdict"])
    samples = {run: pd.read_json(results.run_dir(results_root, profile, "09_imdb_win_rates", run) / "samples.jsonl",
                                 lines=True) for run in runs.index}
    reference = runs[runs == reference_method].index[0]
    rows = []
    for run, method in runs.items():
        if run == reference:
            continue
        for temperature, ours in samples[reference].groupby("temperature"):
            theirs = samples[run][samples[run].temperature == temperature]
            if ours.reference.tolist() != theirs.reference.tolist():
                raise ValueError(f"{reference} and {run} were not judged against the same references at "
                                 f"T = {temperature:g}: rerun notebook 09 for both with the same preferences_run")
            gap, low, high = stats.paired_win_difference(ours.verdict.tolist(), theirs.verdict.tolist(), draws)
            rows.append({"run": run, "method": method, "temperature": float(temperature), "gap": gap, "low": low,
                         "high": high, "verdict": stats.verdict(gap, low, high, reference)})
    return pd.DataFrame(rows)


def win_rate_section(judge_name, reference_tokens, by_temperature, by_step, unfinished, stages, paired=None):
    """Notebook 10's section of figures/README.md, headed by WIN_RATE_MARK: the judge, notebook 09's win
    rates by temperature (`by_temperature`, one column per temperature), `win_rates_over_training`'s
    table, the runs left out and the win-rate stages' wall time (`stages`: (notebook, run, seconds)).
    `reference_tokens`: the longest held-out continuation, in tokens; `paired`: `paired_win_rates`' table."""
    table = by_temperature.pivot_table(index=["method", "setting"], columns="temperature", values="win_rate")
    table = table.reset_index()
    table.columns = [c if isinstance(c, str) else f"T={c:g}" for c in table.columns]
    return f"""{WIN_RATE_MARK}

## winrate_temperature.png / .pdf and winrate_steps.png / .pdf: Fig. 2 (right) and Fig. 3 (right), on IMDb

- judge: `{judge_name}`: the gold sentiment classifier picks the more positive of (prefix + completion) and
  (prefix + the held-out review's own next {reference_tokens} tokens at most);
  ties count half; {int(by_temperature.n.max())} held-out prompts; error bars are binomial standard errors
- the paper's judge is GPT-4 on TL;DR summaries; this offline stand-in judges sentiment only
- unfinished runs left out: {", ".join(unfinished) or "none"}

Win rate against the reviews' own continuations, by sampling temperature:

{results.markdown_table(table.to_dict("records"), list(table.columns))}

{_paired_win_text(paired)}DPO win rate over training (temperature 1, the evaluations' samples):

{results.markdown_table(by_step.to_dict("records"), ["setting", "step", "win_rate", "stderr", "n_tie"])}

Wall time of the win-rate stages: {sum(s for _, _, s in stages) / 60:.1f} minutes over {len(stages)} runs.
"""


def _paired_win_text(paired):
    """The paired win-rate table of `paired_win_rates` for the README, or nothing."""
    if paired is None or paired.empty:
        return ""
    return ("DPO's win rate minus each policy's, paired over the same prompts (95% bootstrap interval):\n\n"
            + results.markdown_table(paired.to_dict("records"),
                                     ["run", "method", "temperature", "gap", "low", "high", "verdict"]) + "\n\n")


def with_section(path, section):
    """The text of the README at `path` (or a bare "# figures/" heading if there is none yet) with
    everything from WIN_RATE_MARK on replaced by `section`: notebook 08 writes the rest of the file."""
    previous = Path(path).read_text() if Path(path).exists() else "# figures/\n"
    return previous.split(WIN_RATE_MARK)[0].rstrip() + "\n\n" + section


def study_run_dir(study_root, figure_root, profile, spec):
    """The run "<notebook>/<run>": finished in the study tree (`make study`: results/<profile>-study),
    else finished in the figure's tree (results/: the study compares its runs with the figure's own,
    a second seed with the first), else the study tree's path (unfinished). Creates nothing."""
    notebook, run = spec.split("/")
    paths = [(Path(root) if Path(root).is_absolute() else results.repo_root() / root) / profile / notebook / run
             for root in (study_root, figure_root)]
    return next((path for path in paths if (path / "FINISHED").exists()), paths[0])


def study_tree_runs(study_root, profile, run_dirs):
    """The runs of {"<notebook>/<run>": directory} that live in the study tree (not the figure's), as a
    DataFrame of notebook, run: what `compute_rows` reads from study_root."""
    return pd.DataFrame([spec.split("/") for spec, path in run_dirs.items()
                         if Path(path) == study_run_dir(study_root, study_root, profile, spec)],
                        columns=["notebook", "run"])


def paired_gap_rows(trajectories, pairs, kls, draws=2000):
    """For each (a, b) of `pairs` (keys of `trajectories`): a's reward minus b's, paired over the same
    prompts at matched KL, over their shared KL range ("range") and at each KL of `kls` both reach,
    each with its 95% interval and `stats.verdict`. Returns a DataFrame: a, b, kl, gap, low, high, verdict."""
    rows = []
    for a, b in pairs:
        over = stats.matched_difference(trajectories[a], trajectories[b], draws)
        rows.append({"a": a, "b": b, "kl": f"{over['kl_low']:.2f}-{over['kl_high']:.2f}", "gap": over["gap"],
                     "low": over["low"], "high": over["high"]})
        rows += [{"a": a, "b": b, "kl": f"{r['kl']:g}", "gap": r["gap"], "low": r["low"], "high": r["high"]}
                 for r in stats.difference_at(trajectories[a], trajectories[b], kls, draws) if not pd.isna(r["gap"])]
    frame = pd.DataFrame(rows, columns=["a", "b", "kl", "gap", "low", "high"])
    frame["verdict"] = [stats.verdict(r.gap, r.low, r.high, "a") for r in frame.itertuples()]
    return frame


BUDGET_COLUMNS = ["a", "b", "budget_steps", "budget_step", "a_kl_reach", "b_kl_reach", "kl", "gap", "low", "high",
                  "verdict"]


def within_budget(trajectory, max_step):
    """A trajectory's evaluations at steps <= max_step (what the run had reached within a budget)."""
    keep = trajectory["step"] <= max_step
    return {key: value[keep] for key, value in trajectory.items()}


def budget_matched_rows(trajectories, run_dirs, pairs, kls, draws=2000):
    """For each (offline run a, PPO run b) of `pairs`: a cut at the steps the budget rule gives it
    against b's whole run (`budget`: as many sequences through backward as b's iterations x rollouts x
    epochs, from each run's params.json), then `paired_gap_rows` on the cut. Adds a's budget in steps,
    the last evaluation within it (budget_step) and the KL each side reaches within the budget."""
    frames = []
    for a, b in pairs:
        pa, pb = results.read_params(run_dirs[a]), results.read_params(run_dirs[b])
        sequences = budget.ppo_backward_sequences(pb["n_steps"], pb["prompts_per_step"], pb["ppo_epochs"])
        steps = budget.offline_steps(sequences, pa["batch_size"])
        cut = within_budget(trajectories[a], steps)
        if len(cut["step"]) < 2:  # only pi_ref's point within the budget: no trajectory to compare
            gaps = pd.DataFrame([{"a": a, "b": b, "kl": "", "gap": math.nan, "low": math.nan, "high": math.nan,
                                  "verdict": "no evaluation within the budget"}])
        else:
            gaps = paired_gap_rows({a: cut, b: trajectories[b]}, [(a, b)], kls, draws)
        gaps.insert(2, "budget_steps", steps)
        gaps.insert(3, "budget_step", int(cut["step"][-1]))
        gaps.insert(4, "a_kl_reach", float(cut["kl"][-1].mean()))
        gaps.insert(5, "b_kl_reach", float(trajectories[b]["kl"][-1].mean()))
        frames.append(gaps)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=BUDGET_COLUMNS)


EVALUATION_COLUMNS = ["run", "step", "kl", "reward", "reward_low", "reward_high", "entropy", "reference_nll",
                      "completion_tokens", "distinct_2"]


def evaluation_rows(run_dirs, draws=2000):
    """Every evaluation of the runs {name: run directory}, with the 95% interval of its reward over
    prompts and the diagnostics that tell sentiment from gaming: the policy's per-token entropy at its
    samples, pi_ref's NLL of them, length, distinct bigrams. Columns EVALUATION_COLUMNS."""
    rows = []
    for name, path in run_dirs.items():
        metrics, t = pd.read_csv(Path(path) / "metrics.csv"), imdb.trajectory(path)
        for i, row in enumerate(metrics.sort_values("step").itertuples()):
            _, low, high = stats.mean_interval(t["reward"][i], draws)
            rows.append({"run": name, "step": row.step, "kl": row.kl, "reward": row.reward, "reward_low": low,
                         "reward_high": high, "entropy": getattr(row, "entropy", float("nan")),
                         "reference_nll": getattr(row, "reference_nll", float("nan")),
                         "completion_tokens": row.completion_tokens,
                         "distinct_2": getattr(row, "distinct_2", float("nan"))})
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def scaling_rows(trajectories, sizes, ppo_gt, kls, draws=2000):
    """The data-scaling study: for each DPO run of `sizes` ({run: (prompts, pairs)}), its reward minus
    PPO-GT's (`ppo_gt`, a key of `trajectories`) at each KL of `kls` and over the shared range, paired.
    Returns a DataFrame: run, prompts, pairs, kl, gap, low, high, verdict."""
    gaps = paired_gap_rows(trajectories, [(run, ppo_gt) for run in sizes], kls, draws)
    gaps.insert(1, "prompts", [sizes[a][0] for a in gaps.a])
    gaps.insert(2, "pairs", [sizes[a][1] for a in gaps.a])
    return gaps.drop(columns="b").rename(columns={"a": "run"})


def study_readme(profile, stages, evaluations, compute, gaps, scaling, pair_sets, accuracy, unfinished):
    """figures/STUDY.md as notebook 13 writes it: the fair frontier's extensions (`make study`) with
    their numbers: every evaluation of every study run (`evaluation_rows`), what each run got
    (`compute_rows`), `gaps` {"lr": the learning-rate probe's, "budget": the probe under the budget
    rule (`budget_matched_rows`), "other": the other paired gaps (`paired_gap_rows`)}, the data-scaling
    table (`scaling_rows`), the
    preference sets' sizes and gold-gap distribution (`training_set_rows`), the learned proxies'
    held-out accuracy (`held_out_accuracy_rows`), and each stage's wall time."""
    stage_rows = [{"notebook": n, "run": r, "minutes": s / 60} for n, r, s in stages]
    gap_columns = ["a", "b", "kl", "gap", "low", "high", "verdict"]
    return f"""# The study: the fair frontier's extensions

Regenerated by `notebooks/13_fig_study.ipynb` (`make study`); do not edit by hand.

- profile: `{profile}`; commit: `{results.git_commit()}`; made {datetime.date.today().isoformat()}
- every gap: a's mean gold reward minus b's at the same KL (both interpolated along their evaluations),
  paired over the same held-out prompts and sampling seed, 95% bootstrap interval over prompts;
  "no difference" when it holds 0. The `kl` column: one KL, or the shared range the gap is averaged over.
- unfinished runs left out: {", ".join(unfinished) or "none"}

## The learning-rate probe: DPO's learning rate chosen on the whole KL range

![DPO at each learning rate and PPO-GT: gold reward against KL](dpo_lr_probe.png)

{_table(gaps["lr"], gap_columns, "(no learning-rate runs)")}

The same runs under the budget rule (`dpo_core.budget`: every method gets as many sequences through a
backward pass as PPO-GT's run; an offline step of batch B costs 2B): each DPO run cut at its last
evaluation within budget_steps, against PPO-GT's whole run; a_kl_reach and b_kl_reach: the KL each
reaches within the budget.

{_table(gaps["budget"], BUDGET_COLUMNS, "(no learning-rate runs against PPO-GT)")}

## Other paired comparisons (the optimizer control, seeds, the other losses)

{_table(gaps["other"], gap_columns, "(none)")}

## Data scaling: DPO against PPO-GT as the preference data grows

![DPO minus PPO-GT against the preference pairs](dpo_vs_preference_data.png)

{_table(scaling, ["run", "prompts", "pairs", "kl", "gap", "low", "high", "verdict"], "(no data-scaling runs)")}

The preference sets (gold-score gap chosen minus rejected: median, quartiles, share under 0.05 and 0.1):

{_table(pair_sets, TRAINING_SET_COLUMNS, "(none)")}

How well each size's learned proxies rank held-out pairs of unseen prompts (DPO: its implicit reward,
Eq. 5, at its last evaluation; the Bradley-Terry reward model fitted on the same pairs; 95% interval with
whole prompts resampled, since a prompt's 6 pairs are one ranking):

{_table(accuracy, ACCURACY_COLUMNS, "(no held-out pairs)")}

## Every evaluation of every study run

entropy: the policy's per-token entropy at its own samples; reference_nll: pi_ref's per-token NLL of them.
In expectation reference_nll = entropy + KL / completion_tokens: a policy that gains KL by raising its
entropy diffuses, one that lowers it sharpens toward what it prefers.

{_table(evaluations, EVALUATION_COLUMNS, "(no runs)")}

## What each study run got

The budget rule's counts (`dpo_core.budget`): gold queries (an offline run's: the gold scores that
labelled its preference set; PPO-GT's: its rollouts' and the pi_ref samples that normalise its reward),
optimizer steps, sequences through a backward pass, training TFLOPs (forward 2N per token, backward 4N)
and the run's wall time, evaluations included.

{_table(compute, COMPUTE_COLUMNS, "(none)")}

## Wall time of each stage

{results.markdown_table(stage_rows, ["notebook", "run", "minutes"])}

Total: {sum(s for _, _, s in stages) / 60:.1f} minutes.
"""


COMPUTE_COLUMNS = ["run", "method", "gold_queries", "optimizer_steps", "backward_sequences", "tflops",
                   "wall_minutes"]


def model_forward_flops(model_dir):
    """Forward FLOPs per token of the model saved in `model_dir` (`budget.forward_flops_per_token`),
    from its safetensors header and config: no weights are loaded."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    n = sum(math.prod(shape) for shape in shapes.values())
    embedding = sum(math.prod(shape) for name, shape in shapes.items() if "embed_tokens" in name or "wte" in name)
    hidden = config.get("hidden_size", config.get("n_embd"))  # Llama's name, GPT-2's
    return budget.forward_flops_per_token(n, embedding, hidden, config["vocab_size"])


def compute_rows(results_root, profile, frame, stages):
    """What each trained run of `frame` (notebooks 04 and 06) got under the budget rule (`budget`):
    gold queries, optimizer steps, sequences through backward, training TFLOPs (estimate) and the
    run's wall time (`stages`: (notebook, run, seconds), evaluations included). Gold queries: an
    offline run's are those that labelled its preference set (notebook 03's samples, shared by every
    offline run on it); PPO-GT's are its rollouts' plus pi_ref's samples that normalise its reward;
    PPO's learned reward model stands between it and the gold queries of the pairs it was trained on."""
    seconds = {(n, r): t for n, r, t in stages}
    rows = []
    for notebook, run in frame[frame.notebook.isin(["04_imdb_dpo_and_baselines", "06_imdb_ppo"])][
            ["notebook", "run"]].drop_duplicates().itertuples(index=False):
        params = results.read_params(results.run_dir(results_root, profile, notebook, run))
        prefs_dir, prefs = results.upstream(results_root, profile, "03_imdb_preferences", params["preferences_run"])
        sft_dir, _ = results.upstream(results_root, profile, "02_imdb_sft", prefs["sft_run"])
        tokens = (prefs["min_prefix_tokens"] + prefs["max_prefix_tokens"]) / 2 + prefs["max_new_tokens"]
        pair_queries = prefs["n_prompts"] * prefs["completions_per_prompt"]
        common = {"forward_per_token": model_forward_flops(sft_dir / "model"), "tokens_per_sequence": tokens,
                  "wall_s": seconds.get((notebook, run), math.nan)}
        if notebook == "04_imdb_dpo_and_baselines":
            row = budget.budget_row(params["method"], "offline", steps=params["n_steps"],
                                    batch_size=params["batch_size"], gold_queries=pair_queries, **common)
        else:
            gold = params["n_steps"] * params["prompts_per_step"] + params["n_normalization_samples"] \
                if params["method"] == "ppo_gt" else pair_queries
            row = budget.budget_row(params["method"], "ppo", steps=params["n_steps"],
                                    prompts_per_step=params["prompts_per_step"], ppo_epochs=params["ppo_epochs"],
                                    minibatch_size=params["minibatch_size"], gold_queries=gold,
                                    new_tokens=params["max_new_tokens"], **common)
        rows.append({"run": run, **row})
    return pd.DataFrame(rows, columns=COMPUTE_COLUMNS)


TRAINING_SET_COLUMNS = ["run", "preferences_run", "prompts", "pairs", "gap_median", "gap_q25", "gap_q75",
                        "gap_under_0.05", "gap_under_0.1"]
ACCURACY_COLUMNS = ["run", "proxy", "pairs", "accuracy", "low", "high"]


def training_set_rows(run_dirs, study_root, figure_root, profile):
    """Each offline run's training pairs ({name: run directory}): its preference set, the number of
    prompts and pairs it trains on (all, or its `n_train_prompts` first prompts) and the gold gap's
    distribution over them (`stats.gap_summary`). Columns TRAINING_SET_COLUMNS."""
    rows = []
    for name, path in run_dirs.items():
        params = results.read_params(path)
        prefs_dir = study_run_dir(study_root, figure_root, profile, f"03_imdb_preferences/{params['preferences_run']}")
        pairs = datasets.load_from_disk(str(prefs_dir / "pairs"))
        n = params.get("n_train_prompts") or len({tuple(p) for p in pairs["prompt_ids"]})
        rows_kept = data.first_prompts(pairs["prompt_ids"], n)
        chosen, rejected = (pd.Series(pairs[side]).iloc[rows_kept] for side in ("chosen_reward", "rejected_reward"))
        rows.append({"run": name, "preferences_run": params["preferences_run"], "prompts": n, "pairs": len(rows_kept),
                     **stats.gap_summary(chosen, rejected)})
    return pd.DataFrame(rows, columns=TRAINING_SET_COLUMNS)


def held_out_accuracy_rows(dpo_dirs, reward_model_dirs):
    """Held-out pair accuracy with its 95% interval: each DPO run's implicit reward at its last
    evaluation (metrics.csv: eval_accuracy and its bounds) and each reward model's (notebook 05's
    metrics.csv), both {name: run directory}. Unfinished or unmeasured runs are left out. Columns
    ACCURACY_COLUMNS; pairs: the held-out pairs of the reward model (DPO's are the same set)."""
    rows = []
    for name, path in dpo_dirs.items():
        metrics = pd.read_csv(Path(path) / "metrics.csv")
        if (Path(path) / "FINISHED").exists() and "eval_accuracy_low" in metrics:
            last = metrics.sort_values("step").iloc[-1]
            rows.append({"run": name, "proxy": "DPO implicit reward", "pairs": math.nan,
                         "accuracy": last.eval_accuracy, "low": last.eval_accuracy_low, "high": last.eval_accuracy_high})
    for name, path in reward_model_dirs.items():
        if (Path(path) / "FINISHED").exists():
            m = pd.read_csv(Path(path) / "metrics.csv").iloc[0]
            rows.append({"run": name, "proxy": "reward model", "pairs": m.held_out_pairs, "accuracy": m.held_out_accuracy,
                         "low": m.get("held_out_accuracy_low", math.nan), "high": m.get("held_out_accuracy_high", math.nan)})
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
