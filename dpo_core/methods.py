"""Every method of the frontier, in one registry: its loss, the name of its one setting, and
how it is drawn. Adding an offline preference method is one entry here plus one params file
(`params/<profile>/04_imdb_dpo_and_baselines/<run>.yaml` with `method:` and `setting:`).

    Method     name, label, setting name, plot colour and marker, loss (offline methods only)
    METHODS    the registry, in the paper's legend order
    get(name)  the entry, or a clear error listing the names
    objective  an offline method bound to a run's setting and options, checked: what a step minimises
    run_label  "DPO, beta 0.1": a run's legend label from its method and setting

A loss takes the policy's and pi_ref's summed log-probs of the chosen and rejected completions,
each (B,), and the run's setting, and returns per-pair losses (B,). The reference-free
baselines ignore pi_ref's. Trained online (PPO) or not at all (Best-of-N, pi_ref), a method
has no loss here; its notebook does the work and the registry only names and draws it.
"""

import math
from dataclasses import dataclass, field
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
    setting_range: tuple = (0.0, float("inf"))  # the setting's allowed interval (open below when it is a beta)
    options: dict = field(default_factory=dict)  # the loss's extra keyword arguments: {name: (default, check, rule)}
    loss_at_reference: Optional[Callable] = None  # setting -> the loss when pi = pi_ref (a step-0 invariant)


def _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, label_smoothing=0.0):
    return losses.dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
                           label_smoothing)[0]


def _preferred_ft(policy_chosen, policy_rejected, reference_chosen, reference_rejected, setting):
    return losses.preferred_ft_loss(policy_chosen)


def _unlikelihood(policy_chosen, policy_rejected, reference_chosen, reference_rejected, alpha):
    return losses.unlikelihood_loss(policy_chosen, policy_rejected, alpha)


def _label_noise(rate):
    return 0 <= rate < 0.5


METHODS = {m.name: m for m in [
    Method("dpo", "DPO (ours)", "beta", "tab:red", "o", _dpo, uses_reference=True,  # Eq. 7; cDPO's label noise
           options={"label_smoothing": (0.0, _label_noise, "in [0, 0.5); 0 is the paper's DPO")},
           loss_at_reference=lambda beta: math.log(2)),  # -log sigma(0), with or without label noise
    Method("ipo", "IPO", "beta", "tab:pink", "h", losses.ipo_loss, uses_reference=True,
           loss_at_reference=lambda beta: (1 / (2 * beta)) ** 2),  # (0 - 1 / (2 beta))^2
    Method("hinge", "SLiC (hinge)", "beta", "tab:olive", "*", losses.hinge_loss, uses_reference=True,
           loss_at_reference=lambda beta: 1.0),  # max(0, 1 - beta * 0)
    Method("ppo", "PPO", "target KL", "tab:blue", "s"),
    Method("ppo_gt", "PPO-GT", "target KL", "tab:purple", "D"),
    Method("unlikelihood", "Unlikelihood", "alpha", "tab:green", "^", _unlikelihood, setting_range=(0.0, 1.0)),
    Method("preferred_ft", "Preferred-FT", None, "tab:orange", "v", _preferred_ft),
    Method("best_of_n", "Best-of-N", "N", "tab:brown", "P"),
    Method("sft", "pi_ref (SFT)", None, "grey", "x"),
]}

OFFLINE = [name for name, m in METHODS.items() if m.loss is not None]  # what notebook 04 trains


def get(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; the methods are {sorted(METHODS)} (dpo_core/methods.py)")
    return METHODS[name]


@dataclass(frozen=True)
class Objective:
    """An offline method bound to one run's setting and options: what each step of the run minimises."""
    method: Method
    setting: float  # DPO's beta, Unlikelihood's alpha, ...; ignored by a method without a setting
    options: dict = field(default_factory=dict)  # the method's declared extra loss arguments, by name

    def losses(self, policy_chosen, policy_rejected, reference_chosen, reference_rejected):
        """Per-pair losses (B,) from summed log-probs, each (B,) (pi_ref's may be None if unused)."""
        return self.method.loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, self.setting,
                                **self.options)


def objective(name, setting=0.0, **options):
    """The offline method `name` bound to `setting` and `options`, each checked against what its
    entry declares: a clear error names the allowed values. Options left out take their defaults;
    an option the method does not declare is refused, so a variant's knob cannot reach another method."""
    method = get(name)
    if method.loss is None:
        raise ValueError(f"{name} is not an offline method; those are {OFFLINE} (dpo_core/methods.py)")
    low, high = method.setting_range
    inside = (low < setting if method.uses_reference else low <= setting) and setting <= high
    if method.setting is not None and not inside:
        bound = f"> {low:g}" if method.uses_reference and high == float("inf") else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name}'s {method.setting} must be {bound}, got {setting}")
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        raise ValueError(f"{name} takes no option {unknown[0]!r}; its options are {sorted(method.options) or 'none'}")
    bound_options = {}
    for option, (default, check, rule) in method.options.items():
        value = options.get(option, default)
        if not check(value):
            raise ValueError(f"{name}'s {option} must be {rule}, got {value}")
        bound_options[option] = value
    return Objective(method, setting, bound_options)


def run_label(name, setting):
    """A run's legend label: "DPO (ours), beta 0.1"; methods without a setting get their label."""
    method = METHODS.get(name)
    if method is None:
        return name
    return method.label if method.setting is None else f"{method.label}, {method.setting} {setting:g}"
