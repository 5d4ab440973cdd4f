"""dpo_core: a small, tested replication of Direct Preference Optimization (arXiv:2305.18290).

Modules, one concern each:
    losses      Eq. 7 (DPO, cDPO), Eq. 2 (Bradley-Terry), Eq. 5 (implicit reward), baselines
    objective   Eq. 3 and Eq. 4 on explicit distributions (teaching, tests)
    logprobs    sequence log-probs and the concatenated chosen/rejected forward
    data        preference pairs as token ids, collation, review prefixes
    sampling    KV-cache ancestral sampling returning token ids
    evaluate    sequence-level KL(pi || pi_ref), exact and sampled; one frontier point
    train       the DPO step, the baselines' steps, SFT, the shared training loop
    ppo         the RLHF baseline: KL-penalised rewards, GAE, clipped PPO, KL controller
    reward      the gold sentiment reward and the learned Bradley-Terry reward model
    assets      real models, corpora and rewards resolved by name, offline first
    results     run directories written atomically; finished runs read back
    plotting    Fig. 2 (left)
    tiny        a tiny random-init GPT-2 and byte tokenizer for tests and smoke runs
    notebook    parameter checks for the papermill notebooks
    exercises   graders, solutions and known mistakes of the exercise notebooks (notebooks/exercises/)
"""

from dpo_core.logprobs import concatenated_forward, sequence_logps
from dpo_core.losses import dpo_loss

__version__ = "0.1.0"
__all__ = ["concatenated_forward", "dpo_loss", "sequence_logps"]
