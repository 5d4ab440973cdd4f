"""dpo_core: a small, tested replication of Direct Preference Optimization (arXiv:2305.18290).

Modules, one concern each, by floor (a module imports only from its own floor and those below; the map with each
module's allowed imports is ARCHITECTURE.md, checked by tests/test_architecture.py):
    the paper's math      losses (Eqs. 2, 5, 7; IPO, hinge, Preferred-FT, Unlikelihood), objective (Eqs. 3, 4),
                          logprobs (sequence log-probs), stats (intervals, paired gaps), budget (the budget rule)
    infrastructure        models, results, distributed, progress, tiny, precision, checkpoint, launch
    data and sampling     methods (the method registry), data, sampling, frozen, reward
    training              evaluate, train, ppo
    assets and judges     assets (models, corpora, text sets, the judge's runtime and model: the resolver),
                          gold (the gold reward's recipe and quality), prepare (`make assets`), judges, tasks
    experiments, reports  imdb, plotting, report, agreement
    notebooks, teaching   notebook (parameter checks), run (a notebook run's plumbing), exercises
"""

from dpo_core.logprobs import concatenated_forward, sequence_logps
from dpo_core.losses import dpo_loss

__version__ = "0.1.0"
__all__ = ["concatenated_forward", "dpo_loss", "sequence_logps"]
