"""The exercise notebooks and their graders (dpo_core.exercises).

A mutation table per grader: the reference solution, the library itself and other right
answers pass; wrong answers written the way students write them each fail with their own hint.
Then the notebooks: committed clean, parameters first, and run under papermill with the
solutions filled in, and once with a planted mistake that the grader must name."""

import ast
import json
from pathlib import Path

import papermill as pm
import pytest
import torch
import torch.nn.functional as F
import yaml

from dpo_core import evaluate, exercises, logprobs, losses, objective, ppo
from dpo_core.exercises import ExerciseFailed
from dpo_core.notebook import ParameterError

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "notebooks" / "exercises").glob("ex[0-9][0-9]_*.ipynb"))
CHECKS = {"completion_labels": exercises.check_completion_labels, "sequence_logps": exercises.check_sequence_logps,
          "dpo_loss": exercises.check_dpo_loss, "implicit_reward": exercises.check_implicit_reward,
          "gradient_weight": exercises.check_gradient_weight,
          "optimal_policy_logps": exercises.check_optimal_policy_logps, "kl_estimates": exercises.check_kl_estimates,
          "gae": exercises.check_gae, "ppo_policy_loss": exercises.check_ppo_policy_loss}


def stub(*args):
    raise NotImplementedError


def mask_positions(input_ids, attention_mask, prompt_lengths, extra=0):
    labels = input_ids.clone()
    for b, p in enumerate(prompt_lengths.tolist()):
        labels[b, : p + extra] = -100
    return labels.masked_fill(attention_mask == 0, -100)


def shifted(logits, labels, normalise=lambda x: x.float().log_softmax(-1)):
    """A student's usual first lines: (log-)probabilities shifted one token, the mask, labels made gatherable."""
    logps = normalise(logits[:, :-1])
    labels = labels[:, 1:]
    mask = labels != -100
    return logps.gather(2, torch.where(mask, labels, 0).unsqueeze(2)).squeeze(2).float(), mask


def reduce(logps, mask, average, check_empty=True):
    if check_empty and not mask.any(1).all():
        raise ValueError("a row has no completion token")
    total = (logps * mask).sum(1)
    return total / mask.sum(1) if average else total


def sequence_logps_unshifted(logits, labels, average=False):
    logps = torch.log_softmax(logits.float(), -1)  # position t scoring token t
    mask = labels != -100
    return reduce(logps.gather(2, torch.where(mask, labels, 0)[..., None]).squeeze(2), mask, average)


def sequence_logps_shifted_backwards(logits, labels, average=False):
    logps = torch.log_softmax(logits[:, 1:].float(), -1)
    labels = labels[:, :-1]
    mask = labels != -100
    return reduce(logps.gather(2, torch.where(mask, labels, 0)[..., None]).squeeze(2), mask, average)


def sequence_logps_gathering_minus_100(logits, labels, average=False):
    logps = torch.log_softmax(logits[:, :-1].float(), -1)
    return reduce(logps.gather(2, labels[:, 1:, None]).squeeze(2), labels[:, 1:] != -100, average)


def ratio_terms(logps, old, advantages, eps):
    ratio = (logps - old).exp()
    return advantages * ratio, advantages * torch.clamp(ratio, 1 - eps, 1 + eps)


def gae_loop(rewards, values, mask, gamma, lam, cut=True):
    """A student's GAE; cut=False forgets to stop the recursion at the end of each row."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = delta + gamma * lam * next_advantage
        keep = mask[:, t] if cut else 1.0
        next_value, next_advantage = values[:, t] * keep, advantages[:, t] * keep
    return advantages * mask, (advantages + values) * mask


def sequence_logps_by_rows(logits, labels, average=False):
    """Right, the long way: one row and one token at a time."""
    out = []
    for row_logits, row_labels in zip(logits.float(), labels):
        terms = [torch.log_softmax(row_logits[t - 1], -1)[row_labels[t]] for t in range(1, len(row_labels))
                 if row_labels[t] != -100]
        if not terms:
            raise ValueError("empty completion")
        out.append(sum(terms) / (len(terms) if average else 1))
    return torch.stack(out)


def kl_with_kl_div(policy_logits, reference_logits, labels):
    """Right, with F.kl_div for the exact term."""
    p, q = (torch.log_softmax(x[:, :-1].float(), -1) for x in (policy_logits, reference_logits))
    mask = labels[:, 1:] != -100
    index = torch.where(mask, labels[:, 1:], 0)[..., None]
    sampled = ((p - q).gather(2, index).squeeze(2) * mask).sum(1)
    exact = (F.kl_div(q, p, log_target=True, reduction="none").sum(-1) * mask).sum(1)
    return sampled, exact


def labels_in_place(input_ids, attention_mask, prompt_lengths):
    labels = input_ids  # not a copy
    labels[attention_mask == 0] = -100
    return mask_positions(labels, attention_mask, prompt_lengths)


def kl_terms(policy_logits, reference_logits, labels, fp32=True, shift=1):
    """A student's first lines: both log-softmaxes, the mask, gatherable labels; shift=0 forgets the shift."""
    T = labels.shape[1]
    p, q = (torch.log_softmax(x[:, :T - shift].float() if fp32 else x[:, :T - shift], -1)
            for x in (policy_logits, reference_logits))
    mask = labels[:, shift:] != -100
    return p, q, mask, torch.where(mask, labels[:, shift:], 0)[..., None]


def kl_unshifted(policy_logits, reference_logits, labels):
    p, q, mask, index = kl_terms(policy_logits, reference_logits, labels, shift=0)
    return ((p - q).gather(2, index).squeeze(2) * mask).sum(1), ((p.exp() * (p - q)).sum(-1) * mask).sum(1)


def kl_exact_at_label(policy_logits, reference_logits, labels):
    p, q, mask, index = kl_terms(policy_logits, reference_logits, labels)
    sampled = ((p - q).gather(2, index).squeeze(2) * mask).sum(1)
    return sampled, ((p.exp() * (p - q)).gather(2, index).squeeze(2) * mask).sum(1)


def kl_exact_unweighted(policy_logits, reference_logits, labels):
    p, q, mask, index = kl_terms(policy_logits, reference_logits, labels)
    return ((p - q).gather(2, index).squeeze(2) * mask).sum(1), ((p - q).sum(-1) * mask).sum(1)


def kl_in_bf16(policy_logits, reference_logits, labels):
    p, q, mask, index = kl_terms(policy_logits, reference_logits, labels, fp32=False)
    sampled = ((p - q).gather(2, index).squeeze(2) * mask).sum(1)
    return sampled.float(), ((p.exp() * (p - q)).sum(-1) * mask).sum(1).float()


# Right answers, written differently from the reference solutions: they must pass.
RIGHT = {
    "completion_labels": [lambda ids, am, p: mask_positions(ids, am, p)],
    "sequence_logps": [lambda lg, y, average=False: logprobs.sequence_logps(lg, y, average=average),
                       sequence_logps_by_rows],
    "dpo_loss": [lambda pc, pr, rc, rr, beta: losses.dpo_loss(pc, pr, rc, rr, beta)[0],
                 lambda pc, pr, rc, rr, beta: F.softplus(-beta * ((pc - pr) - (rc - rr)))],
    "implicit_reward": [lambda pol, ref, beta: (pol - ref) * beta],
    "gradient_weight": [losses.dpo_gradient_weight, lambda rw, rl: 1 / (1 + torch.exp(rw - rl))],
    "optimal_policy_logps": [objective.optimal_policy_logps,
                             lambda ref, r, beta: (ref + r / beta) - torch.logsumexp(ref + r / beta, -1, keepdim=True)],
    "kl_estimates": [evaluate.kl_from_logits, kl_with_kl_div],
    "gae": [ppo.gae, lambda r, v, m, gamma, lam: gae_loop(r, v, m, gamma, lam)],
    "ppo_policy_loss": [lambda *args: ppo.ppo_policy_loss(*args)[0],
                        lambda lp, old, a, m, eps: -(torch.min(*ratio_terms(lp, old, a, eps)) * m).sum() / m.sum()],
}

# Wrong answers as students write them, each with a piece of the hint it must get.
WRONG = {
    "completion_labels": [
        (lambda ids, am, p: torch.where(am.bool(), ids, -100), "the prompt is scored"),
        (lambda ids, am, p: mask_positions(ids, torch.ones_like(am), p), "the padding is scored"),
        (lambda ids, am, p: mask_positions(ids, am, p, extra=-1), "the last prompt token is scored"),
        (lambda ids, am, p: mask_positions(ids, am, p, extra=1), "the first completion token is masked"),
        (lambda ids, am, p: mask_positions(ids, am, p)[:, 1:], "do not shift them here"),
        (labels_in_place, "changed its argument `input_ids` in place"),
        (lambda ids, am, p: mask_positions(ids, am, p).float(), "int64"),
    ],
    "sequence_logps": [
        (sequence_logps_unshifted, "no one-token shift"),
        (sequence_logps_shifted_backwards, "shifted the wrong way"),
        (lambda lg, y, average=False: shifted(lg, y)[0].sum(1), "prompt and padding positions are counted"),
        (lambda lg, y, average=False: (shifted(lg, y)[0] * (y[:, :-1] != -100)).sum(1), "mask is not shifted"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y), True), "you averaged"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y), False), "average=True asks for the mean"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y), False) / (lg.shape[1] - 1 if average else 1),
         "divides by every position"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y, torch.Tensor.float), average), "raw logits"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y, lambda x: x.float().softmax(-1)), average),
         "summed probabilities"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y, lambda x: x.log_softmax(-1)), average),  # in bf16
         "log-softmax in fp32"),
        (sequence_logps_gathering_minus_100, "replace them by a valid index"),
        (lambda lg, y, average=False: reduce(*shifted(lg, y), average, check_empty=False), "must raise ValueError"),
    ],
    "dpo_loss": [
        (lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))), "log(sigmoid(x))"),
        (lambda pc, pr, rc, rr, beta: torch.log1p(torch.exp(-beta * ((pc - rc) - (pr - rr)))), "F.logsigmoid"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pr - rr) - (pc - rc))), "the wrong way round"),
        (lambda pc, pr, rc, rr, beta: F.logsigmoid(beta * ((pc - rc) - (pr - rr))), "negative log-likelihood"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)), "beta is missing"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(((pc - rc) - (pr - rr)) / beta), "don't divide"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)), "pi_ref is missing"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - pr) + (rc - rr))), "the sign of the reference"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean(), "one loss per pair"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).detach(), "no gradient reaches"),
        (lambda pc, pr, rc, rr, beta: torch.tensor([-F.logsigmoid(beta * ((a - c) - (b - d))).item()
                                                    for a, b, c, d in zip(pc, pr, rc, rr)]), "no gradient reaches"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc.data - rc) - (pr - rr))),
         "no gradient reaches policy_chosen_logps;"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))) + (pr - pr.detach()),
         "the values are right but the gradient is not"),
    ],
    "implicit_reward": [
        (lambda pol, ref, beta: beta * (ref - pol), "the reward must rise"),
        (lambda pol, ref, beta: pol - ref, "beta is missing"),
        (lambda pol, ref, beta: (pol - ref) / beta, "don't divide"),
        (lambda pol, ref, beta: beta * pol.exp() / ref.exp(), "don't exponentiate"),
    ],
    "gradient_weight": [
        (lambda rw, rl: torch.sigmoid(rw - rl), "the weight is reversed"),
        (lambda rw, rl: rl - rw, "not the margin itself"),
        (lambda rw, rl: torch.exp(rl - rw), "not the odds"),
        (lambda rw, rl: torch.exp(rl - rw) / (1 + torch.exp(rl - rw)), "use torch.sigmoid"),
    ],
    "optimal_policy_logps": [
        (lambda ref, r, beta: ref + r / beta, "not normalised"),
        (lambda ref, r, beta: torch.log_softmax(ref + beta * r, -1), "r / beta, not beta * r"),
        (lambda ref, r, beta: torch.log_softmax(ref - r / beta, -1), "the sign of the reward"),
        (lambda ref, r, beta: torch.log_softmax(r / beta, -1), "pi_ref is missing"),
        (lambda ref, r, beta: torch.softmax(ref + r / beta, -1), "return log-probabilities"),
        (lambda ref, r, beta: torch.log_softmax(ref + r / beta, dim=0), "normalise over the last dimension"),
        (lambda ref, r, beta: torch.log(ref.exp() * (r / beta).exp() / (ref.exp() * (r / beta).exp()).sum(-1, True)),
         "torch.logsumexp"),
    ],
    "kl_estimates": [
        (lambda pl, rl, y: (evaluate.kl_from_logits(pl, rl, y)[0], evaluate.kl_from_logits(rl, pl, y)[1]),
         "yours is KL(pi_ref || pi)"),
        (lambda pl, rl, y: (evaluate.kl_from_logits(rl, pl, y)[0], evaluate.kl_from_logits(pl, rl, y)[1]),
         "the wrong sign"),
        (kl_unshifted, "no one-token shift"),
        (lambda pl, rl, y: evaluate.kl_from_logits(pl, rl, y.clamp(min=0)), "prompt and padding positions are counted"),
        (lambda pl, rl, y: tuple(kl / (y[:, 1:] != -100).sum(1) for kl in evaluate.kl_from_logits(pl, rl, y)),
         "a sum, not a mean"),
        (kl_exact_at_label, "not only at the sampled token"),
        (kl_exact_unweighted, "weight each log-ratio by pi(v)"),
        (lambda pl, rl, y: evaluate.kl_from_logits(pl, rl, y)[::-1], "in that order"),
        (kl_in_bf16, "log-softmax in fp32"),
    ],
    "gae": [
        (lambda r, v, m, gamma, lam: gae_loop(r, v, m, gamma, lam, cut=False), "the padding leaks"),
        (lambda r, v, m, gamma, lam: gae_loop(r, v, torch.ones_like(m), gamma, lam), "the mask is ignored"),
        (lambda r, v, m, gamma, lam: gae_loop(r, v, m, gamma, 1.0), "lam is missing"),
        (lambda r, v, m, gamma, lam: gae_loop(r, v, m, 1.0, lam), "gamma is missing"),
        (lambda r, v, m, gamma, lam: (gae_loop(r, v, m, gamma, lam)[0],) * 2, "R_t = A_t + V_t"),
    ],
    "ppo_policy_loss": [
        (lambda lp, old, a, m, eps: -(torch.max(*ratio_terms(lp, old, a, eps)) * m).sum() / m.sum(), "optimistic"),
        (lambda lp, old, a, m, eps: -(ratio_terms(lp, old, a, eps)[0] * m).sum() / m.sum(), "never clipped"),
        (lambda lp, old, a, m, eps: -(ratio_terms(lp, old, a, eps)[1] * m).sum() / m.sum(), "keep the unclipped term"),
        (lambda lp, old, a, m, eps: -(torch.min(*ratio_terms(old, lp, a, eps)) * m).sum() / m.sum(), "is inverted"),
        (lambda lp, old, a, m, eps: -(torch.min(a * (lp - old).exp(), a * (lp - old).clamp(-eps, eps).exp()) * m).sum()
         / m.sum(), "not the log-ratio"),
        (lambda lp, old, a, m, eps: -torch.min(*ratio_terms(lp, old, a, eps)).mean(), "padding is averaged in"),
        (lambda lp, old, a, m, eps: -(torch.min(*ratio_terms(lp, old, a, eps)) * m).sum(), "not their sum"),
        (lambda lp, old, a, m, eps: (torch.min(*ratio_terms(lp, old, a, eps)) * m).sum() / m.sum(), "return a loss"),
        (lambda lp, old, a, m, eps: -(torch.min(*ratio_terms(lp.detach(), old, a, eps)) * m).sum() / m.sum(),
         "no gradient reaches"),
    ],
}


def test_every_exercise_function_has_a_grader_solution_and_mutations():
    assert set(CHECKS) == set(exercises.SOLUTIONS) == set(exercises.MISTAKES) == set(RIGHT) == set(WRONG)


@pytest.mark.parametrize("name", CHECKS)
def test_right_answers_pass(name, capsys):
    for answer in [exercises.solution(name), *RIGHT[name]]:
        CHECKS[name](answer)
        assert f"{name} passed" in capsys.readouterr().out


CASES = [(name, i) for name in WRONG for i in range(len(WRONG[name]))]


@pytest.mark.parametrize("name, i", CASES, ids=[f"{name}-{i}" for name, i in CASES])
def test_a_wrong_answer_fails_with_its_own_hint(name, i):
    answer, hint = WRONG[name][i]
    with pytest.raises(ExerciseFailed) as err:
        CHECKS[name](answer)
    assert hint in str(err.value), str(err.value)


@pytest.mark.parametrize("name", CHECKS)
def test_every_known_mistake_is_recognised_as_itself_and_the_stub_as_a_stub(name):
    for mistake, (hint, _, _) in exercises.MISTAKES[name].items():
        with pytest.raises(ExerciseFailed) as err:
            CHECKS[name](exercises.solution(name, f"{name}/{mistake}"))
        assert hint in str(err.value), (mistake, str(err.value))
    with pytest.raises(ExerciseFailed, match="still the stub"):
        CHECKS[name](stub)
    with pytest.raises(ExerciseFailed, match="is the `return` missing"):
        CHECKS[name](lambda *args: None)


def test_exercise_failed_is_an_assertion_error_and_the_solution_api_says_what_exists():
    assert issubclass(ExerciseFailed, AssertionError)
    with pytest.raises(ValueError, match="no exercise function 'dpo_los'"):
        exercises.solution("dpo_los")
    with pytest.raises(ValueError, match="no known mistake 'typo' of dpo_loss; they are"):
        exercises.solution("dpo_loss", "dpo_loss/typo")
    assert exercises.solution("dpo_loss", "gae/no_lambda") is exercises.SOLUTIONS["dpo_loss"]  # another stub's plant
    assert "F.logsigmoid" in exercises.solution_source("dpo_loss")
    exercises.check_plant("", False, "dpo_loss")
    exercises.check_plant("dpo_loss/swapped", True, "dpo_loss")
    for plant, show in [("dpo_loss/swapped", False), ("gae/no_lambda", True)]:
        with pytest.raises(ParameterError, match="plant_mistake"):
            exercises.check_plant(plant, show, "dpo_loss")


# ---------------------------------------------------------------------------------------------
# The notebooks.


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_is_an_exercise_for_every_graded_function():
    assert len(EXERCISES) >= 6
    text = "".join(source(c) for path in EXERCISES for c in code_cells(path))
    for name in CHECKS:
        assert f"def {name}(" in text and f"exercises.check_{name}({name})" in text, name


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_committed_clean_with_the_parameters_cell_first_and_only(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    cells = code_cells(path)
    for cell in cells:
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name}: strip outputs"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, must be tagged 'parameters'"
    lines = source(cells[0]).splitlines()
    declared = {}
    for node in ast.parse(source(cells[0])).body:
        line = lines[node.lineno - 1]
        assert isinstance(node, ast.AnnAssign) and node.annotation.id in {"int", "float", "str", "bool"}, line
        ast.literal_eval(node.value)
        assert line.split("#", 1)[1].strip() and node.end_lineno == node.lineno, f"one commented literal a line: {line}"
        declared[node.target.id] = node.annotation.id
    assert declared == {"show_solutions": "bool", "plant_mistake": "str"}
    assert set(pm.inspect_notebook(str(path))) == set(declared)
    assert "check_parameters(globals())" in source(cells[1])
    markdown = [source(c) for c in notebook["cells"] if c["cell_type"] == "markdown"]
    assert "$$" in markdown[0], f"{path.name}: open with the paper's equation"
    assert markdown[-1].startswith("## Question for a real run") and notebook["cells"][-1]["cell_type"] == "markdown"
    smoke = yaml.safe_load((ROOT / "params" / "smoke" / "exercises" / f"{path.stem}.yaml").read_text())
    assert smoke == {"show_solutions": True}


def execute(path, **parameters):
    out = ROOT / "build" / "exercises" / f"{path.stem}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3", cwd=str(ROOT),
                               progress_bar=False, execution_timeout=120)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_runs_under_papermill_with_the_solutions(path):
    smoke = yaml.safe_load((ROOT / "params" / "smoke" / "exercises" / f"{path.stem}.yaml").read_text())
    nb = execute(path, **smoke)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    for name in CHECKS:
        if f"exercises.check_{name}(" in "".join(c.source for c in nb.cells):
            assert f"{name} passed" in printed


def test_a_planted_mistake_stops_the_notebook_with_its_hint():
    path = ROOT / "notebooks" / "exercises" / "ex02_dpo_loss.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        execute(path, show_solutions=True, plant_mistake="dpo_loss/log_of_sigmoid")
    assert "ExerciseFailed" in str(err.value)
    assert exercises.MISTAKES["dpo_loss"]["log_of_sigmoid"].hint in str(err.value)
