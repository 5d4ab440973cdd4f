"""dpo_core: a small, tested replication of Direct Preference Optimization (arXiv:2305.18290).

Modules, one concern each:
    losses      Eq. 7 (DPO, cDPO), Eq. 2 (Bradley-Terry), Eq. 5 (implicit reward), baselines
    logprobs    sequence log-probs and the concatenated chosen/rejected forward
    objective   Eq. 3 and Eq. 4 on explicit distributions (teaching, tests)
    data        preference pairs as token ids, collation
    train       the DPO step and its metrics
    tiny        a tiny random-init GPT-2 and byte tokenizer for tests and smoke runs
    notebook    parameter checks for the papermill notebooks
"""

from dpo_core.logprobs import concatenated_forward, sequence_logps
from dpo_core.losses import dpo_loss

__version__ = "0.1.0"
__all__ = ["concatenated_forward", "dpo_loss", "sequence_logps"]
