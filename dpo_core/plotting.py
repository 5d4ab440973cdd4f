"""Figures in the paper's layout, drawn from result tables only, and live training curves.

    plot_reward_kl_frontier   Fig. 2 left: every evaluation of every run, 95% intervals, runs joined
    plot_win_rates            Fig. 2 right / Fig. 3 right: win rate with binomial standard errors
    LiveCurves                loss, accuracy, KL and reward against step, redrawn in place at each evaluation
    save_figure               PNG + PDF
    win_rate_figure           plot_win_rates on a new figure, titled and saved
    plot_gap_against_data     the data-scaling study: DPO minus PPO-GT at matched KL against the pairs
    plot_two_judge_win_rates  win rate against temperature per policy, the gold and the local judge side by side
"""

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from dpo_core.methods import METHODS, run_label


def plot_reward_kl_frontier(frame, ax=None, reference_reward=None):
    """Fig. 2 left: mean gold reward against sequence-level KL(pi || pi_ref), one colour and marker
    per method (`methods.METHODS`), every evaluation of every run a point, each run's points joined
    in step order, and vertical bars for the 95% bootstrap interval over prompts when `frame` has
    reward_low / reward_high. Columns: method, run, step, kl, reward."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    for name, method in METHODS.items():
        rows = frame[frame.method == name]
        for i, (_, run) in enumerate(rows.sort_values("step").groupby("run", sort=True)):
            label = method.label if i == 0 else None
            ax.plot(run.kl, run.reward, color=method.colour, lw=0.6, alpha=0.5)
            if "reward_low" in run:
                ax.errorbar(run.kl, run.reward, yerr=[run.reward - run.reward_low, run.reward_high - run.reward],
                            fmt="none", ecolor=method.colour, elinewidth=0.7, alpha=0.6)
            ax.scatter(run.kl, run.reward, label=label, color=method.colour, marker=method.marker, s=24, alpha=0.85)
    if reference_reward is not None:
        ax.axhline(reference_reward, color="grey", lw=0.8, ls="--", label=r"$\pi_\mathrm{ref}$ (SFT)")
    ax.set(xlabel=r"KL$(\pi \,\|\, \pi_\mathrm{ref})$, summed over completion tokens", ylabel="mean gold reward",
           title="IMDb sentiment generation: reward vs KL")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def save_figure(fig, fig_dir, name):
    """Write `name`.png and `name`.pdf into fig_dir; returns the paths."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def win_rate_figure(frame, x, title, fig_dir, name, figsize=(6, 4.5)):
    """`plot_win_rates` of `frame` against `x` on a new figure with `title`, saved as `name`.png and
    .pdf in `fig_dir`; returns the paths."""
    fig, ax = plt.subplots(figsize=figsize)
    plot_win_rates(frame, ax, x=x)
    ax.set_title(title)
    return save_figure(fig, fig_dir, name)


def plot_win_rates(frame, ax=None, x="temperature"):
    """Fig. 2 right / Fig. 3 right: win rate against `x` (temperature or step) with binomial
    standard-error bars, one line per (method, setting). Columns: method, setting, x, win_rate, stderr."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    betas = sorted(frame[frame.method == "dpo"].setting.unique())
    for (name, setting), rows in frame.sort_values(x).groupby(["method", "setting"], sort=True):
        method = METHODS.get(name)
        colour, marker = (method.colour, method.marker) if method else (None, "o")
        if name == "dpo" and len(betas) > 1:  # one shade of red per beta, darker = larger beta
            colour = plt.cm.Reds(0.4 + 0.6 * betas.index(setting) / (len(betas) - 1))
        ax.errorbar(rows[x], rows.win_rate, yerr=rows.stderr, label=run_label(name, setting), marker=marker,
                    color=colour, capsize=2, lw=1, ms=4, alpha=0.85)
    ax.axhline(0.5, color="black", lw=0.6, ls=":")
    ax.set(xlabel="sampling temperature" if x == "temperature" else "training step", ylabel="win rate")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return ax


def plot_two_judge_win_rates(rows, axes):
    """Notebook 14: each policy's win rate against temperature, one panel per judge (`axes`: a pair;
    rows of `agreement.two_judge_rows`: run, temperature, judge, win_rate, low, high), 95% intervals."""
    for ax, judge in zip(axes, ("gold", "local")):
        for run, group in rows[rows.judge == judge].sort_values("temperature").groupby("run", sort=True):
            ax.errorbar(group.temperature, group.win_rate, yerr=[group.win_rate - group.low, group.high - group.win_rate],
                        marker="o", ms=4, lw=1, capsize=2, label=run)
        ax.axhline(0.5, color="black", lw=0.6, ls=":")
        ax.set(xlabel="sampling temperature", ylabel="win rate against the review's continuation", ylim=(0, 1),
               title={"gold": "gold sentiment classifier", "local": "local LLM judge"}[judge])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return axes


class LiveCurves:
    """One figure a training notebook redraws in place at every evaluation: the training loss and
    (DPO-style methods) the implicit-reward accuracy against step, KL and gold reward against
    step, and the run's path on the reward-KL plane. In JupyterLab it moves while the run trains;
    a notebook executed by papermill keeps only its last state (the display is updated, not
    appended). Use `update` as `train_loop`'s on_evaluate."""

    def __init__(self, title, reference_reward=None):
        self.fig, self.axes = plt.subplots(1, 3, figsize=(13, 3.4))
        self.reward_ax = self.axes[1].twinx()  # gold reward beside the KL, against step
        self.fig.suptitle(title, fontsize=10)
        self.reference_reward = reference_reward
        self.handle = display(self.fig, display_id=True)  # None outside IPython (a terminal run): nothing to redraw
        plt.close(self.fig)  # shown through the handle only, not again at the cell's end

    def update(self, train_log, eval_rows):
        if self.handle is None:
            return
        loss_ax, step_ax, plane_ax = self.axes
        for ax in (*self.axes, self.reward_ax):
            ax.clear()
        for ax in self.axes:
            ax.grid(alpha=0.3)
        if train_log:
            steps = [row["step"] for row in train_log]
            loss_ax.plot(steps, [row.get("loss", np.nan) for row in train_log], lw=0.8, label="loss")
            if "rewards/accuracies" in train_log[0]:
                loss_ax.plot(steps, [row["rewards/accuracies"] for row in train_log], lw=0.8,
                             label="implicit-reward accuracy")
            loss_ax.legend(fontsize=7)
        loss_ax.set(xlabel="step", title="training")
        evaluated = [row for row in eval_rows if "kl" in row]
        if evaluated:
            steps = [row["step"] for row in evaluated]
            step_ax.plot(steps, [row["kl"] for row in evaluated], marker="o", ms=3, label="KL")
            self.reward_ax.plot(steps, [row["reward"] for row in evaluated], marker="s", ms=3, color="tab:red")
            self.reward_ax.set_ylabel("gold reward", color="tab:red")
            step_ax.set(xlabel="step", ylabel="KL", title="evaluations")
            plane_ax.plot([row["kl"] for row in evaluated], [row["reward"] for row in evaluated], marker="o", ms=4)
            plane_ax.annotate(f"step {steps[-1]}", (evaluated[-1]["kl"], evaluated[-1]["reward"]), fontsize=7)
        if self.reference_reward is not None:
            plane_ax.axhline(self.reference_reward, color="grey", lw=0.8, ls="--")
        plane_ax.set(xlabel="KL", ylabel="gold reward", title="frontier point")
        self.fig.tight_layout()
        self.handle.update(self.fig)


def plot_gap_against_data(scaling, ax=None):
    """The data-scaling study: DPO's reward minus PPO-GT's at matched KL (`report.scaling_rows`:
    run, pairs, kl, gap, low, high) against the number of preference pairs (log axis), one line per
    KL, bars the paired 95% intervals. The range rows ("a-b") are left out: their KL spans differ."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    points = scaling[~scaling.kl.str.contains("-")]
    for i, (kl, rows) in enumerate(points.groupby("kl", sort=False)):
        rows = rows.sort_values("pairs")
        ax.errorbar(rows.pairs, rows.gap, yerr=[rows.gap - rows.low, rows.high - rows.gap], marker="o", ms=4,
                    capsize=3, lw=1, label=f"at KL {kl}", color=f"C{i}")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set(xlabel="pairs in DPO's preference set (same steps for all: a small set repeats its pairs)",
           ylabel="DPO minus PPO-GT, mean gold reward", title="Does DPO catch PPO-GT with more preference data?")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
