"""Figures in the paper's layout, drawn from result tables only."""

import matplotlib.pyplot as plt

METHOD_STYLE = {  # label, colour, marker; the paper's legend order
    "dpo": ("DPO (ours)", "tab:red", "o"),
    "ppo": ("PPO", "tab:blue", "s"),
    "ppo_gt": ("PPO-GT", "tab:purple", "D"),
    "unlikelihood": ("Unlikelihood", "tab:green", "^"),
    "preferred_ft": ("Preferred-FT", "tab:orange", "v"),
    "best_of_n": ("Best-of-N", "tab:brown", "P"),
    "sft": ("pi_ref (SFT)", "grey", "x"),  # win rates only; the frontier draws pi_ref as a line
}


def plot_reward_kl_frontier(frame, ax=None, reference_reward=None):
    """Fig. 2 left: mean gold reward against sequence-level KL(pi || pi_ref), one series per
    method, every evaluation of every run a point. `frame` needs columns method, kl, reward."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    for method, (label, colour, marker) in METHOD_STYLE.items():
        rows = frame[frame.method == method]
        if len(rows):
            ax.scatter(rows.kl, rows.reward, label=label, color=colour, marker=marker, s=28, alpha=0.8)
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


def series_label(method, setting):
    label = METHOD_STYLE.get(method, (method, None, None))[0]
    named = {"dpo": "beta", "unlikelihood": "alpha", "ppo": "target KL", "ppo_gt": "target KL", "best_of_n": "N"}
    return f"{label}, {named[method]} {setting:g}" if method in named else label


def plot_win_rates(frame, ax=None, x="temperature"):
    """Fig. 2 right / Fig. 3 right: win rate against `x` (temperature or step) with binomial
    standard-error bars, one line per (method, setting). Columns: method, setting, x, win_rate, stderr."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    betas = sorted(frame[frame.method == "dpo"].setting.unique())
    for (method, setting), rows in frame.sort_values(x).groupby(["method", "setting"], sort=True):
        _, colour, marker = METHOD_STYLE.get(method, (method, None, "o"))
        if method == "dpo" and len(betas) > 1:  # one shade of red per beta, darker = larger beta
            colour = plt.cm.Reds(0.4 + 0.6 * betas.index(setting) / (len(betas) - 1))
        ax.errorbar(rows[x], rows.win_rate, yerr=rows.stderr, label=series_label(method, setting), marker=marker,
                    color=colour, capsize=2, lw=1, ms=4, alpha=0.85)
    ax.axhline(0.5, color="black", lw=0.6, ls=":")
    ax.set(xlabel="sampling temperature" if x == "temperature" else "training step", ylabel="win rate")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return ax
