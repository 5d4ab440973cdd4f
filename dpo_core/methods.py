"""Every method of the frontier, in one registry: its loss, the name of its one setting, and
how it is drawn. Adding an offline preference method is one entry here plus one params file
(`params/<profile>/04_imdb_dpo_and_baselines/<run>.yaml` with `method:` and `setting:`).

    Method     name, label, setting name, plot colour and marker, loss (offline methods only)
    METHODS    the registry, in the paper's legend order
    get(name)  the entry, or a clear error listing the names
    run_label  "DPO, beta 0.1": a run's legend label from its method and setting

A loss takes the policy's and pi_ref's summed log-probs of the chosen and rejected completions,
each (B,), and the run's setting, and returns per-pair losses (B,). The reference-free
baselines ignore pi_ref's. Trained online (PPO) or not at all (Best-of-N, pi_ref), a method
has no loss here; its notebook does the work and the registry only names and draws it.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from dpo_core import losses


@dataclass(frozen=True)
class Method:
    name: str  # the `method` parameter and the metrics' `method` column
    label: str  # the legend label
    setting: Optional[str]  # what the run's `setting` parameter means ("beta", "alpha", ...); None: no setting
    colour: str
    marker: str
    loss: Optional[Callable] = None  # (pi_w, pi_l, ref_w, ref_l, setting) -> (B,); offline methods only
    uses_reference: bool = False  # pi_ref's log-probs enter the loss; the setting is a beta (implicit rewards, Eq. 5)


def _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, label_smoothing=0.0):
    return losses.dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
                           label_smoothing)[0]


def _preferred_ft(policy_chosen, policy_rejected, reference_chosen, reference_rejected, setting):
    return losses.preferred_ft_loss(policy_chosen)


def _unlikelihood(policy_chosen, policy_rejected, reference_chosen, reference_rejected, alpha):
    return losses.unlikelihood_loss(policy_chosen, policy_rejected, alpha)


METHODS = {m.name: m for m in [
    Method("dpo", "DPO (ours)", "beta", "tab:red", "o", _dpo, uses_reference=True),  # Eq. 7
    Method("ipo", "IPO", "beta", "tab:pink", "h", losses.ipo_loss, uses_reference=True),
    Method("hinge", "SLiC (hinge)", "beta", "tab:olive", "*", losses.hinge_loss, uses_reference=True),
    Method("ppo", "PPO", "target KL", "tab:blue", "s"),
    Method("ppo_gt", "PPO-GT", "target KL", "tab:purple", "D"),
    Method("unlikelihood", "Unlikelihood", "alpha", "tab:green", "^", _unlikelihood),
    Method("preferred_ft", "Preferred-FT", None, "tab:orange", "v", _preferred_ft),
    Method("best_of_n", "Best-of-N", "N", "tab:brown", "P"),
    Method("sft", "pi_ref (SFT)", None, "grey", "x"),
]}

OFFLINE = [name for name, m in METHODS.items() if m.loss is not None]  # what notebook 04 trains


def get(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; the methods are {sorted(METHODS)} (dpo_core/methods.py)")
    return METHODS[name]


def run_label(name, setting):
    """A run's legend label: "DPO (ours), beta 0.1"; methods without a setting get their label."""
    method = METHODS.get(name)
    if method is None:
        return name
    return method.label if method.setting is None else f"{method.label}, {method.setting} {setting:g}"
