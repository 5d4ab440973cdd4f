"""Graders for the exercise notebooks (notebooks/exercises/): for each function a student
writes, its reference solution, the known wrong answers, and a `check_*` grader.

A grader runs the student's function on hand-made and random cases, edge cases included
(margins of +-1e4, fully masked rows, bf16 logits), and compares it with the library's own
implementation named in its docstring. On a mismatch it computes every known wrong answer of
that exercise itself and, when the student's output equals one, raises `ExerciseFailed` with
that mistake's hint; otherwise it names the case and the size of the difference.

    check_completion_labels     labels masking prompt and padding          data.make_pair, collate_pairs
    check_sequence_logps        log pi(y|x): the shift, the mask, the sum  logprobs.sequence_logps
    check_dpo_loss              Eq. 7 in its stable form                   losses.dpo_loss
    check_implicit_reward       Eq. 5                                      losses.implicit_reward
    check_gradient_weight       sigma(r_l - r_w) of Section 4              losses.dpo_gradient_weight
    check_optimal_policy_logps  Eq. 4 in closed form                       objective.optimal_policy_logps
    check_kl_estimates          sampled and exact KL (footnote 3)          evaluate.kl_from_logits
    check_gae                   GAE over right-padded completions          ppo.gae
    check_ppo_policy_loss       PPO's clipped surrogate                    ppo.ppo_policy_loss

SOLUTIONS maps each function name to its reference solution (`solution`, `solution_source`);
MISTAKES maps it to the known wrong answers, {mistake name: Mistake(hint, answer, atol)}.
"""

import inspect
from collections import namedtuple

import torch
import torch.nn.functional as F

from dpo_core import evaluate, logprobs, losses, objective, ppo
from dpo_core.notebook import ParameterError

IGNORE = -100  # the label of prompt and padding positions, as everywhere in dpo_core
SOLUTIONS, MISTAKES = {}, {}
# answer: the wrong function, with the student's signature (None: does not apply to this case);
# atol: match within this absolute tolerance instead of the grader's (precision mistakes).
Mistake = namedtuple("Mistake", "hint answer atol", defaults=[None])


class ExerciseFailed(AssertionError):
    """The student's function disagrees with the reference; the message says what to fix."""


def solution(name, plant=""):
    """The reference solution of exercise function `name` (a notebook's `show_solutions`).
    plant = "name/mistake" returns that known wrong answer instead (tests plant mistakes)."""
    if name not in SOLUTIONS:
        raise ValueError(f"no exercise function {name!r}; they are {sorted(SOLUTIONS)}")
    if not plant.startswith(name + "/"):
        return SOLUTIONS[name]
    mistake = plant.split("/", 1)[1]
    if mistake not in MISTAKES[name]:
        raise ValueError(f"no known mistake {mistake!r} of {name}; they are {sorted(MISTAKES[name])}")
    return planted(name, mistake)


def planted(name, mistake):
    """Known wrong answer `mistake` of `name` as a whole function: right where the mistake does not apply."""
    wrong, right = MISTAKES[name][mistake].answer, SOLUTIONS[name]

    def answer(*args):
        out = wrong(*args)
        return right(*args) if out is None else out

    return answer


def solution_source(name):
    """The reference solution's source text, to print."""
    return inspect.getsource(solution(name))


def check_plant(plant, show_solutions, *names):
    """Stop a notebook whose `plant_mistake` names no function of it, or is set without solutions."""
    if plant and not (show_solutions and plant.split("/")[0] in names):
        raise ParameterError(f"plant_mistake {plant!r} must be 'function/mistake' with function one of {list(names)}, "
                             "and needs show_solutions: true (it replaces that function's solution)")


# ---------------------------------------------------------------------------------------------
# The grading machinery, shared by every check_*.


def _clone(args):
    return [a.clone() if torch.is_tensor(a) else a for a in args]


def _pairs(got, expected):
    """[(got tensor, expected tensor), ...] when structure and shapes match, else []."""
    if not isinstance(expected, tuple):
        return [(got, expected)] if torch.is_tensor(got) and got.shape == expected.shape else []
    if not (isinstance(got, (tuple, list)) and len(got) == len(expected)):
        return []
    pairs = [p for g, e in zip(got, expected) for p in _pairs(g, e)]
    return pairs if len(pairs) == len(expected) else []


def _close(got, expected, atol, rtol=1e-5):
    """Same structure, shapes and values (nan equals nan, inf equals inf); dtypes may differ."""
    pairs = _pairs(got, expected)
    return bool(pairs) and all(torch.allclose(g.detach().double(), e.detach().double(), rtol=rtol, atol=atol,
                                              equal_nan=True) for g, e in pairs)


def _flat(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _show(x):
    if torch.is_tensor(x):
        return f"shape {tuple(x.shape)} {x.dtype}: {[round(v, 4) for v in x.detach().double().flatten()[:6].tolist()]}"
    return repr(x)[:200]


def _call(name, student, label, args, expects_error, hints):
    """The student's output on one case; every way of failing before a comparison becomes a hint."""
    inputs = _clone(args)
    try:
        got = student(*inputs)
    except NotImplementedError:
        raise ExerciseFailed(f"{name} is still the stub: replace `raise NotImplementedError` with your code") from None
    except ValueError as err:
        if expects_error:
            return None
        raise ExerciseFailed(f"{name} raised ValueError on case '{label}', where the reference does not: {err}") \
            from err
    except Exception as err:
        hint = hints.get("error", "") if "out of bounds" in str(err) else ""
        raise ExerciseFailed(f"{name} raised {type(err).__name__} on case '{label}': {err}. {hint}") from err
    if expects_error:
        raise ExerciseFailed(f"{name}, case '{label}': {hints['empty']}")
    if got is None:
        raise ExerciseFailed(f"{name} returned None on case '{label}': is the `return` missing?")
    names = list(inspect.signature(SOLUTIONS[name]).parameters)
    for arg_name, before, after in zip(names, args, inputs):
        if torch.is_tensor(before) and not torch.equal(before, after):
            raise ExerciseFailed(f"{name} changed its argument `{arg_name}` in place: the caller still needs it; work "
                                 f"on a copy (`{arg_name}.clone()`) or out of place (masked_fill, not masked_fill_)")
    return got


def _grads(fn, args, grad):
    """d sum(fn(args)) / d args[i] for i in grad, or None where no gradient reaches an argument."""
    inputs = [a.clone().requires_grad_(i in grad) if torch.is_tensor(a) else a for i, a in enumerate(args)]
    out = fn(*inputs)
    if not (torch.is_tensor(out) and out.requires_grad):
        return None
    out.sum().backward()
    return [inputs[i].grad for i in grad]


def _check_grad(name, student, reference, label, args, grad, atol):
    got, expected = _grads(student, args, grad), _grads(reference, args, grad)
    names = list(inspect.signature(SOLUTIONS[name]).parameters)
    missing = [names[i] for i, g in zip(grad, got or [None] * len(grad)) if g is None]
    if missing:
        raise ExerciseFailed(f"{name}, case '{label}': no gradient reaches {', '.join(missing)}; build "
                             "the result from the input tensors with torch ops, without .item(), .detach(), "
                             "torch.no_grad() or torch.tensor(...) of Python numbers")
    if not all(_close(g, e, atol) for g, e in zip(got, expected)):
        raise ExerciseFailed(f"{name}, case '{label}': the values are right but the gradient is not; "
                             "is a term detached (.detach(), .data) or computed under torch.no_grad()?")


def _grade(name, student, reference, cases, atol=1e-5, grad=(), **hints):
    """Run `student` against `reference` on each (label, args) case; pass, or raise the most
    specific hint: a known mistake, then inf/nan, then a dtype, then the size of the difference.
    hints: `empty` (the reference raises ValueError), `nonfinite`, `dtype`, `error` (index out of bounds)."""
    for label, args in cases:
        try:
            expected = reference(*_clone(args))
        except ValueError:
            expected = ValueError
        got = _call(name, student, label, args, expected is ValueError, hints)
        if expected is ValueError:
            continue
        if _close(got, expected, atol) and all(g.dtype == e.dtype for g, e in zip(_flat(got), _flat(expected))):
            if grad:
                _check_grad(name, student, reference, label, args, grad, atol)
            continue
        for mistake in MISTAKES[name].values():
            try:
                wrong = mistake.answer(*_clone(args))
            except Exception:  # a wrong answer that cannot run on this case is not this one
                continue
            if wrong is not None and _close(got, wrong, mistake.atol or atol):
                raise ExerciseFailed(f"{name}, case '{label}': {mistake.hint}")
        pairs = _pairs(got, expected)
        if any((~torch.isfinite(g) & torch.isfinite(e)).any() for g, e in pairs if g.is_floating_point()):
            raise ExerciseFailed(f"{name}, case '{label}': inf or nan where the reference is finite. "
                                 + hints.get("nonfinite", "Look for exp() or log() of extreme values."))
        if _close(got, expected, atol):
            raise ExerciseFailed(f"{name}, case '{label}': right values, wrong dtype "
                                 f"({[g.dtype for g in _flat(got)]}, expected {[e.dtype for e in _flat(expected)]}). "
                                 + hints.get("dtype", ""))
        diffs = [(g.detach().double() - e.double()).abs().max().item() for g, e in pairs if g.numel()]
        raise ExerciseFailed(
            f"{name} disagrees with the reference on case '{label}'"
            + (f" (largest difference {max(diffs):.3g})" if diffs else "")
            + f"\n  expected {', '.join(map(_show, _flat(expected)))}\n  got      {', '.join(map(_show, _flat(got)))}\n"
            "It matches none of the known mistakes: compare each step with the equation above, printing shapes.")
    print(f"{name} passed: {len(cases)} cases ({'; '.join(label for label, _ in cases)})")


def _sequences(lengths, prompt_lengths, vocab, seed, width=None, dtype=torch.float32, scale=3.0):
    """Right-padded random sequences: input_ids, attention_mask, labels (B, T) and logits (B, T, V)."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    input_ids = torch.randint(vocab, (len(lengths), width), generator=g)
    positions = torch.arange(width)
    real = positions < torch.tensor(lengths)[:, None]  # (B, T)
    prompt = positions < torch.tensor(prompt_lengths)[:, None]
    labels = input_ids.masked_fill(prompt | ~real, IGNORE)
    logits = (torch.randn(len(lengths), width, vocab, generator=g) * scale).to(dtype)
    return input_ids, real.long(), labels, logits


def _masked_sum(values, mask, average=False):  # (B, T), (B, T) -> (B,)
    total = (values * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def _at_labels(logits, labels, normalise=True, fp32=True):
    """(B, T, V), (B, T) -> (B, T) fp32 log-prob of each label; -100 reads token 0. Slips: the raw logit
    (normalise=False), the log-softmax in the logits' own dtype (fp32=False)."""
    logits = logits.float() if fp32 else logits
    logits = torch.log_softmax(logits, -1) if normalise else logits
    return logits.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1).float()


_GATHER_HINT = ("Labels hold -100 at prompt and padding positions: replace them by a valid index "
                "(labels.clamp(min=0)) before gather, then zero those positions with the mask.")
_BF16_HINT = ("on bf16 logits your result is off by more than fp32 rounding: take the log-softmax in fp32 "
              "(`logits.float()` first) and return fp32; bf16 keeps 8 bits of mantissa, 2 to 3 significant digits.")


# ---------------------------------------------------------------------------------------------
# Exercise 1: log pi(y|x) of a completion (ex01_sequence_logps).


def completion_labels(input_ids, attention_mask, prompt_lengths):
    """Labels: input_ids with the prompt and the padding set to -100. (B, T), (B, T), (B,) -> (B, T)."""
    positions = torch.arange(input_ids.shape[1])  # (T,)
    is_prompt = positions < prompt_lengths[:, None]  # (B, T)
    # by position and attention mask, never by token id: GPT-2's pad token is its EOS
    return input_ids.masked_fill(is_prompt | (attention_mask == 0), IGNORE)


def _library_labels(input_ids, attention_mask, prompt_lengths):
    """data.make_pair's labels ([-100] * len(prompt) + completion) of each row, padded with -100 as
    data.collate_pairs pads them."""
    rows = [torch.tensor([IGNORE] * p + ids[p:n]) for ids, n, p in
            zip(input_ids.tolist(), attention_mask.sum(-1).tolist(), prompt_lengths.tolist())]
    return logprobs.pad_right(rows, input_ids.shape[1], IGNORE)


def _relabel(input_ids, attention_mask, prompt_lengths, prompt_shift=0, prompt=True, padding=True):
    masked = torch.zeros_like(input_ids, dtype=torch.bool)
    if prompt:
        masked |= torch.arange(input_ids.shape[1]) < (prompt_lengths + prompt_shift)[:, None]
    if padding:
        masked |= attention_mask == 0
    return input_ids.masked_fill(masked, IGNORE)


MISTAKES["completion_labels"] = {
    "prompt_counted": Mistake(
        "the prompt is scored: set labels[b, :prompt_lengths[b]] to -100. log pi(y|x) conditions on the prompt x "
        "and never scores it.", lambda ids, am, p: _relabel(ids, am, p, prompt=False)),
    "padding_counted": Mistake(
        "the padding is scored: set labels to -100 where attention_mask is 0.",
        lambda ids, am, p: _relabel(ids, am, p, padding=False)),
    "one_prompt_token_short": Mistake(
        "off by one at the prompt's end: the last prompt token is scored. The prompt is positions 0 .. p-1, p tokens.",
        lambda ids, am, p: _relabel(ids, am, p, prompt_shift=-1)),
    "first_completion_token_dropped": Mistake(
        "off by one at the prompt's end: the first completion token is masked. The completion starts at position p; "
        "the shift by one happens later, in sequence_logps.", lambda ids, am, p: _relabel(ids, am, p, prompt_shift=1)),
    "shifted_here": Mistake(
        "labels keep input_ids' shape (B, T): do not shift them here; sequence_logps pairs logits[:, :-1] with "
        "labels[:, 1:].", lambda ids, am, p: completion_labels(ids, am, p)[:, 1:]),
}


def check_completion_labels(student):
    """Grade `completion_labels(input_ids, attention_mask, prompt_lengths)` against the labels of
    data.make_pair padded as data.collate_pairs pads them."""
    cases = []
    for label, lengths, prompts, seed in [("hand-made: prompts of 2 and 1 token, one row padded", [5, 6], [2, 1], 0),
                                          ("random batch of 4", [9, 4, 7, 9], [3, 1, 6, 2], 1)]:
        input_ids, attention_mask, _, _ = _sequences(lengths, prompts, 50, seed)
        cases.append((label, (input_ids, attention_mask, torch.tensor(prompts))))
    _grade("completion_labels", student, _library_labels, cases,
           dtype="Labels are token ids, int64 like input_ids: start from input_ids, not from a float tensor.")


def sequence_logps(logits, labels, average=False):
    """log pi(y|x) = sum_t log pi(y_t | x, y_<t) over completion tokens (their mean if average).
    (B, T, V), (B, T) -> (B,)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1; fp32 whatever came in
    mask = labels != IGNORE  # (B, T-1)
    if not mask.any(-1).all():
        raise ValueError(f"rows {(~mask.any(-1)).nonzero().flatten().tolist()} have no completion token")
    logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # (B, T-1)
    total = (logps * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def _library_sequence_logps(logits, labels, average=False):
    return logprobs.sequence_logps(logits, labels, average=average)


def _shifted_sum(logits, labels, average=False, normalise=True, mask=None, value=lambda x: x, fp32=True):
    """log pi(y|x) with one of its parts swapped out: the per-token value, the normalisation, the mask or the dtype."""
    logps = value(_at_labels(logits[:, :-1], labels[:, 1:], normalise, fp32))  # (B, T-1)
    return _masked_sum(logps, labels[:, 1:] != IGNORE if mask is None else mask, average)


MISTAKES["sequence_logps"] = {
    "no_shift": Mistake(
        "no one-token shift: the logits at position t predict token t + 1, so pair logits[:, :-1] with labels[:, 1:].",
        lambda lg, y, average=False: _masked_sum(_at_labels(lg, y), y != IGNORE, average)),
    "shift_backwards": Mistake(
        "shifted the wrong way: the logits at position t predict token t + 1, so pair logits[:, :-1] with "
        "labels[:, 1:] (not logits[:, 1:] with labels[:, :-1]).",
        lambda lg, y, average=False: _masked_sum(_at_labels(lg[:, 1:], y[:, :-1]), y[:, :-1] != IGNORE, average)),
    "mask_ignored": Mistake(
        "prompt and padding positions are counted: after gathering at a placeholder index, zero every position "
        "whose label is -100 (multiply by the mask labels != -100).",
        lambda lg, y, average=False: _shifted_sum(lg, y, average, mask=torch.ones_like(y[:, 1:]))),
    "mask_not_shifted": Mistake(
        "the mask is not shifted with the labels: build it from labels[:, 1:], the labels the logits are paired with.",
        lambda lg, y, average=False: _shifted_sum(lg, y, average, mask=y[:, :-1] != IGNORE)),
    "averaged": Mistake(
        "you averaged over the completion tokens: log pi(y|x) is their sum (average only when average=True). "
        "DPO as published sums; a mean changes the effective beta by about the completion length.",
        lambda lg, y, average=False: _library_sequence_logps(lg, y, average=True)),
    "never_averaged": Mistake(
        "average=True asks for the mean: divide each row's sum by its number of completion tokens.",
        lambda lg, y, average=False: _library_sequence_logps(lg, y)),
    "mean_over_all_positions": Mistake(
        "the mean divides by every position: divide by each row's number of completion tokens, mask.sum(-1).",
        lambda lg, y, average=False: _library_sequence_logps(lg, y) / (y.shape[1] - 1) if average else None),
    "unnormalised": Mistake(
        "those are raw logits, not log-probabilities: take the log-softmax over the vocabulary before gathering.",
        lambda lg, y, average=False: _shifted_sum(lg, y, average, normalise=False)),
    "probabilities": Mistake(
        "you summed probabilities: sum log-probabilities (log_softmax), since log pi(y|x) = sum_t log pi(y_t | ...).",
        lambda lg, y, average=False: _shifted_sum(lg, y, average, value=torch.exp)),
    "bf16_log_softmax": Mistake(
        _BF16_HINT, lambda lg, y, average=False: None if lg.dtype == torch.float32
        else _shifted_sum(lg, y, average, fp32=False), atol=0.5),
}


def check_sequence_logps(student):
    """Grade `sequence_logps(logits, labels, average=False)` against logprobs.sequence_logps."""
    _, _, hand_labels, hand_logits = _sequences([5, 6], [2, 1], 7, seed=0, width=6)
    _, _, labels, logits = _sequences([10, 7, 4, 9], [1, 3, 2, 5], 17, seed=1)
    _, _, bf16_labels, bf16_logits = _sequences([12, 9, 6], [2, 4, 1], 64, seed=2, dtype=torch.bfloat16, scale=4.0)
    _, _, empty_labels, empty_logits = _sequences([6, 4], [2, 4], 7, seed=3)
    cases = [("hand-made: prompts of 2 and 1 token, one row padded", (hand_logits, hand_labels, False)),
             ("random batch of 4", (logits, labels, False)),
             ("random batch of 4, average=True", (logits, labels, True)),
             ("bf16 logits", (bf16_logits, bf16_labels, False)),
             ("a row with no completion token", (empty_logits, empty_labels, False))]
    _grade("sequence_logps", student, _library_sequence_logps, cases, error=_GATHER_HINT,
           dtype="Return fp32 whatever the logits' dtype: cast with .float() before the log-softmax.",
           empty="a row with no completion token must raise ValueError: a sum over nothing would score it "
                 "log-prob 0, the likeliest sequence there is, and a mean would be 0/0.")


# ---------------------------------------------------------------------------------------------
# Exercise 2: the DPO loss, Eq. 7 (ex02_dpo_loss).


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Eq. 7 per pair: -log sigma(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)]). (B,) x 4 -> (B,)."""
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # never log(sigmoid(.)): -inf below -88


def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


MISTAKES["dpo_loss"] = {
    "log_of_sigmoid": Mistake(
        "inf at a margin of -1e4: log(sigmoid(x)) (or log(1 + exp(-x))) overflows, since sigmoid(x) is 0 in fp32 "
        "below about -88 (-104 with subnormals). Use the stable F.logsigmoid(x) (= -F.softplus(-x)).",
        lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(beta * _margin(pc, pr, rc, rr)))),
    "swapped": Mistake(
        "chosen and rejected are the wrong way round: the loss must fall as the chosen completion gains probability "
        "relative to pi_ref; h = beta * [(log pi_w - log ref_w) - (log pi_l - log ref_l)], loss -log sigma(h).",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(-beta * _margin(pc, pr, rc, rr))),
    "no_minus": Mistake(
        "the sign of the loss: Eq. 7 is the negative log-likelihood, -log sigma(h), a loss to minimise (>= 0).",
        lambda pc, pr, rc, rr, beta: F.logsigmoid(beta * _margin(pc, pr, rc, rr))),
    "no_beta": Mistake(
        "beta is missing: h = beta * (difference of log-ratios).",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(_margin(pc, pr, rc, rr))),
    "divided_by_beta": Mistake(
        "multiply by beta, don't divide: the implicit reward of Eq. 5 is beta * log pi/pi_ref.",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(_margin(pc, pr, rc, rr) / beta)),
    "no_reference": Mistake(
        "pi_ref is missing: each log-prob enters as the log-ratio log pi(y|x) - log pi_ref(y|x).",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr))),
    "reference_added": Mistake(
        "the sign of the reference term: subtract the reference's log-ratio, "
        "(log pi_w - log pi_l) - (log ref_w - log ref_l).",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - pr) + (rc - rr)))),
    "mean": Mistake(
        "return one loss per pair, shape (B,): the caller reduces (.mean()), as losses.dpo_loss does.",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * _margin(pc, pr, rc, rr)).mean()),
}


def check_dpo_loss(student):
    """Grade `dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)` (per-pair
    losses) against losses.dpo_loss, values and gradients."""
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(16, generator=g) * 80 for _ in range(4)]  # summed log-probs of 32-token completions
    small = [-torch.rand(16, generator=g) * 10 for _ in range(4)]
    zeros = torch.zeros(4)
    extreme = (torch.tensor([-1e5, -1.0, -1e3, -2.0]), torch.tensor([-1.0, -1e5, -2.0, -1e3]), zeros, zeros)
    hand = (torch.tensor([0.0, 0.0, -20.0]), torch.tensor([0.0, -10.0, 0.0]), torch.zeros(3), torch.zeros(3))
    cases = [("hand-made: beta * margin = 0, 1, -2", (*hand, 0.1)),
             ("random log-probs, beta 0.1", (*logps, 0.1)),
             ("random log-probs, beta 2.5", (*small, 2.5)),
             ("margins of -1e4, +1e4, -99.8, +99.8 in fp32", (*extreme, 0.1))]
    _grade("dpo_loss", student, lambda *args: losses.dpo_loss(*args)[0], cases, atol=1e-4, grad=(0, 1),
           nonfinite="log(sigmoid(x)) overflows: use F.logsigmoid(x).")


# ---------------------------------------------------------------------------------------------
# Exercise 3: the implicit reward (Eq. 5) and the gradient's weight (Section 4) (ex03_implicit_reward).


def implicit_reward(policy_logps, reference_logps, beta):
    """Eq. 5 without beta * log Z(x): r(x, y) = beta * log pi(y|x) / pi_ref(y|x). (B,) -> (B,)."""
    return beta * (policy_logps - reference_logps)


MISTAKES["implicit_reward"] = {
    "sign": Mistake("the reward must rise as the policy makes y likelier than pi_ref does: "
                    "beta * (log pi - log pi_ref).",
                    lambda pol, ref, beta: beta * (ref - pol)),
    "no_beta": Mistake("beta is missing: r = beta * log pi/pi_ref.", lambda pol, ref, beta: pol - ref),
    "divided_by_beta": Mistake("multiply by beta, don't divide: r = beta * log pi/pi_ref (Eq. 5).",
                               lambda pol, ref, beta: (pol - ref) / beta),
    "probability_ratio": Mistake("Eq. 5 is beta times a log-ratio: subtract the log-probs, don't exponentiate them.",
                                 lambda pol, ref, beta: beta * torch.exp(pol - ref)),
}


def check_implicit_reward(student):
    """Grade `implicit_reward(policy_logps, reference_logps, beta)` against losses.implicit_reward."""
    g = torch.Generator().manual_seed(0)
    pol, ref = -torch.rand(16, generator=g) * 60, -torch.rand(16, generator=g) * 60
    cases = [("hand-made", (torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0]), 0.5)),
             ("random, beta 0.1", (pol, ref, 0.1)),
             ("random, beta 3", (pol[:4] / 20, ref[:4] / 20, 3.0))]
    _grade("implicit_reward", student, losses.implicit_reward, cases)


def gradient_weight(chosen_rewards, rejected_rewards):
    """Section 4: each pair's gradient is weighted by sigma(r_l - r_w), large when mis-ordered. (B,) -> (B,)."""
    return torch.sigmoid(rejected_rewards - chosen_rewards)


MISTAKES["gradient_weight"] = {
    "reversed": Mistake(
        "the weight is reversed: it must be large when the implicit reward mis-orders the pair (r_l > r_w), "
        "sigma(r_l - r_w); yours weighs most the pairs already ordered.",
        lambda rw, rl: torch.sigmoid(rw - rl)),
    "no_sigmoid": Mistake("the weight is sigma(r_l - r_w), a number in (0, 1), not the margin itself.",
                          lambda rw, rl: rl - rw),
    "odds": Mistake("the weight is the probability sigma(r_l - r_w) that Bradley-Terry (Eq. 1) prefers y_l, "
                    "not the odds exp(r_l - r_w).", lambda rw, rl: torch.exp(rl - rw)),
}


def check_gradient_weight(student):
    """Grade `gradient_weight(chosen_rewards, rejected_rewards)` against losses.dpo_gradient_weight."""
    g = torch.Generator().manual_seed(1)
    cases = [("hand-made: margins 1, 0, -3", (torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0]))),
             ("random", (torch.randn(16, generator=g) * 3, torch.randn(16, generator=g) * 3)),
             ("margins of +-1e4", (torch.tensor([1e4, -1e4, 0.0]), torch.tensor([-0.0, 0.0, 1e4])))]
    _grade("gradient_weight", student, losses.dpo_gradient_weight, cases,
           nonfinite="exp(x) / (1 + exp(x)) is inf / inf = nan for large x: use torch.sigmoid.")


# ---------------------------------------------------------------------------------------------
# Exercise 4: the optimal policy of Eq. 4 (ex04_optimal_policy).


def optimal_policy_logps(reference_logps, rewards, beta):
    """Eq. 4: log pi_r(y|x) = log pi_ref(y|x) + r(x, y) / beta - log Z(x). (..., K) -> (..., K)."""
    return torch.log_softmax(reference_logps + rewards / beta, dim=-1)  # log Z(x) is the logsumexp it subtracts


MISTAKES["optimal_policy_logps"] = {
    "unnormalised": Mistake(
        "not normalised: Eq. 4 divides by Z(x); subtract log Z(x) = logsumexp(log pi_ref + r / beta) over the K "
        "completions so the probabilities sum to 1.", lambda ref, r, beta: ref + r / beta),
    "times_beta": Mistake(
        "r / beta, not beta * r: a small beta (a weak KL penalty) must let pi_r move far from pi_ref.",
        lambda ref, r, beta: torch.log_softmax(ref + beta * r, -1)),
    "sign": Mistake("the sign of the reward: pi_r puts more mass on higher-reward completions, exp(+r / beta).",
                    lambda ref, r, beta: torch.log_softmax(ref - r / beta, -1)),
    "no_reference": Mistake("pi_ref is missing: pi_r is pi_ref reweighted by exp(r / beta).",
                            lambda ref, r, beta: torch.log_softmax(r / beta, -1)),
    "probabilities": Mistake("return log-probabilities, not probabilities.",
                             lambda ref, r, beta: torch.softmax(ref + r / beta, -1)),
    "wrong_dim": Mistake("normalise over the last dimension, the K completions of one prompt, not over prompts.",
                         lambda ref, r, beta: torch.log_softmax(ref + r / beta, 0)),
}


def check_optimal_policy_logps(student):
    """Grade `optimal_policy_logps(reference_logps, rewards, beta)` against objective.optimal_policy_logps."""
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)  # 3 prompts, K = 5
    cases = [("hand-made: uniform pi_ref, rewards 0, 1, 2, 3, beta 0.5",
              (torch.full((4,), -torch.log(torch.tensor(4.0, dtype=torch.float64))),
               torch.arange(4, dtype=torch.float64), 0.5)),
             ("3 prompts, K = 5, beta 0.2", (ref, torch.rand(3, 5, generator=g, dtype=torch.float64), 0.2)),
             ("large r / beta (2000)", (ref, torch.rand(3, 5, generator=g, dtype=torch.float64) * 100, 0.05))]
    _grade("optimal_policy_logps", student, objective.optimal_policy_logps, cases, atol=1e-8,
           nonfinite="exp(r / beta) overflows (r / beta is 2000 here): stay in log space with torch.logsumexp "
                     "or torch.log_softmax.")


# ---------------------------------------------------------------------------------------------
# Exercise 5: sampled and exact KL(pi || pi_ref) of a sequence (ex05_kl_estimators).


def kl_estimates(policy_logits, reference_logits, labels):
    """Footnote 3: sum over completion tokens of log pi/pi_ref at the sampled token (sampled), and of the
    per-token KL over the vocabulary (exact). (B, T, V) x 2, (B, T) -> (B,), (B,)."""
    labels = labels[:, 1:]  # position t predicts token t + 1
    mask = labels != IGNORE  # (B, T-1)
    policy = torch.log_softmax(policy_logits[:, :-1].float(), -1)  # (B, T-1, V)
    reference = torch.log_softmax(reference_logits[:, :-1].float(), -1)
    index = labels.clamp(min=0)[..., None]  # (B, T-1, 1)
    sampled = (policy.gather(-1, index) - reference.gather(-1, index)).squeeze(-1)  # (B, T-1)
    exact = (policy.exp() * (policy - reference)).sum(-1)  # (B, T-1)
    return (sampled * mask).sum(-1), (exact * mask).sum(-1)


def _kl(policy_logits, reference_logits, labels, shift=True, masked=True, average=False, exact="policy", sign=1,
        fp32=True):
    """kl_estimates with one known slip; exact: policy (right), reference (reversed), label, unweighted."""
    if shift:
        policy_logits, reference_logits, labels = policy_logits[:, :-1], reference_logits[:, :-1], labels[:, 1:]
    p, q = (torch.log_softmax(x.float() if fp32 else x, -1).float() for x in (policy_logits, reference_logits))
    index = labels.clamp(min=0)[..., None]
    sampled = sign * (p.gather(-1, index) - q.gather(-1, index)).squeeze(-1)
    per_token = {"policy": lambda: (p.exp() * (p - q)).sum(-1), "reference": lambda: (q.exp() * (q - p)).sum(-1),
                 "label": lambda: (p.exp() * (p - q)).gather(-1, index).squeeze(-1),
                 "unweighted": lambda: (p - q).sum(-1)}[exact]()
    mask = labels != IGNORE if masked else torch.ones_like(labels)
    return _masked_sum(sampled, mask, average), _masked_sum(per_token, mask, average)


MISTAKES["kl_estimates"] = {
    "exact_reversed": Mistake(
        "the exact KL is reversed: KL(pi || pi_ref) weights by the policy, sum_v pi(v) (log pi(v) - log pi_ref(v)); "
        "yours is KL(pi_ref || pi).", lambda pl, rl, y: _kl(pl, rl, y, exact="reference")),
    "sampled_reversed": Mistake(
        "the sampled estimate has the wrong sign: log pi(y_t) - log pi_ref(y_t) at the sampled token.",
        lambda pl, rl, y: _kl(pl, rl, y, sign=-1)),
    "no_shift": Mistake(
        "no one-token shift: the logits at position t give the distribution of token t + 1; use logits[:, :-1] "
        "with labels[:, 1:].", lambda pl, rl, y: _kl(pl, rl, y, shift=False)),
    "mask_ignored": Mistake(
        "prompt and padding positions are counted: sum over positions whose label is not -100 only.",
        lambda pl, rl, y: _kl(pl, rl, y, masked=False)),
    "averaged": Mistake(
        "footnote 3 sums the per-token KLs over the completion: a sum, not a mean.",
        lambda pl, rl, y: _kl(pl, rl, y, average=True)),
    "exact_at_label": Mistake(
        "the exact per-token KL sums over the whole vocabulary v, not only at the sampled token.",
        lambda pl, rl, y: _kl(pl, rl, y, exact="label")),
    "exact_unweighted": Mistake(
        "weight each log-ratio by pi(v): the exact KL is sum_v pi(v) (log pi(v) - log pi_ref(v)).",
        lambda pl, rl, y: _kl(pl, rl, y, exact="unweighted")),
    "swapped_outputs": Mistake("return (sampled, exact), in that order.",
                               lambda pl, rl, y: evaluate.kl_from_logits(pl, rl, y)[::-1]),
    "bf16_log_softmax": Mistake(_BF16_HINT, lambda pl, rl, y: None if pl.dtype == torch.float32
                                else _kl(pl, rl, y, fp32=False), atol=0.5),
}


def check_kl_estimates(student):
    """Grade `kl_estimates(policy_logits, reference_logits, labels)` -> (sampled, exact) against
    evaluate.kl_from_logits."""
    cases = []
    for label, lengths, prompts, vocab, dtype, seed in [
            ("random batch of 3", [8, 6, 7], [2, 1, 4], 10, torch.float32, 0),
            ("bf16 logits", [10, 7], [3, 2], 64, torch.bfloat16, 1),
            ("a fully masked row (KL 0)", [6, 4], [2, 4], 10, torch.float32, 2)]:
        _, _, labels, reference = _sequences(lengths, prompts, vocab, seed, scale=2.0)
        noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed + 10))
        cases.append((label, ((reference + noise).to(dtype), reference.to(dtype), labels)))
    _grade("kl_estimates", student, evaluate.kl_from_logits, cases, atol=1e-4, error=_GATHER_HINT,
           dtype="Return fp32 whatever the logits' dtype: cast with .float() before the log-softmax.")


# ---------------------------------------------------------------------------------------------
# Exercise 6: PPO, the RLHF baseline: GAE and the clipped objective (ex06_ppo).


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Advantages A_t = delta_t + gamma lam A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t, backwards over each
    completion (nothing after its last token); returns R_t = A_t + V_t; 0 on padding. (B, T) x 3 -> (B, T) x 2."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros(len(rewards))  # after the last token: the episode has ended
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        real = mask[:, t].bool()
        advantages[:, t] = torch.where(real, delta + gamma * lam * next_advantage, 0.0)
        next_value = torch.where(real, values[:, t], 0.0)  # padding carries nothing back
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


MISTAKES["gae"] = {
    "padding_leaks": Mistake(
        "the padding leaks into each row's last real token: after the last token V_{t+1} and A_{t+1} are 0 (the "
        "completion has ended), not the values and advantages computed at padded positions.",
        lambda r, v, m, gamma, lam: tuple(x * m for x in ppo.gae(r, v, torch.ones_like(m), gamma, lam))),
    "mask_ignored": Mistake(
        "the mask is ignored: advantages and returns are 0 at padded positions, and padding must not feed into "
        "the last real token (V_{t+1} = A_{t+1} = 0 there).",
        lambda r, v, m, gamma, lam: ppo.gae(r, v, torch.ones_like(m), gamma, lam)),
    "no_lambda": Mistake("lam is missing: A_t = delta_t + gamma * lam * A_{t+1}.",
                         lambda r, v, m, gamma, lam: ppo.gae(r, v, m, gamma, 1.0)),
    "no_gamma": Mistake("gamma is missing: delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}.",
                        lambda r, v, m, gamma, lam: ppo.gae(r, v, m, 1.0, lam)),
    "returns_are_advantages": Mistake("the returns are R_t = A_t + V_t, the value head's target, not A_t.",
                                      lambda r, v, m, gamma, lam: (ppo.gae(r, v, m, gamma, lam)[0],) * 2),
}


def check_gae(student):
    """Grade `gae(rewards, values, mask, gamma, lam)` -> (advantages, returns) against ppo.gae."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(7) < torch.tensor([7, 4, 5, 1])[:, None]).float()  # right-padded, (4, 7)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)  # garbage on padding too
    hand = (torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3))
    empty = mask.clone()
    empty[1] = 0
    cases = [("hand-made: rewards 0, 0, 1, values 0.5, gamma 1, lam 0.5", (*hand, 1.0, 0.5)),
             ("random, right-padded, gamma 0.9, lam 0.8", (rewards, values, mask, 0.9, 0.8)),
             ("a fully masked row, gamma 1, lam 0.95", (rewards, values, empty, 1.0, 0.95))]
    _grade("gae", student, ppo.gae, cases)


def ppo_policy_loss(logps, old_logps, advantages, mask, clip_range=0.2):
    """PPO's clipped surrogate as a loss: -mean over tokens of min(A r, A clip(r, 1 - e, 1 + e)), r = pi / pi_old.
    (B, T) x 4 -> ()."""
    ratio = torch.exp(logps - old_logps)
    objective = torch.minimum(advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return -(objective * mask).sum() / mask.sum()  # the pessimistic bound, averaged over completion tokens


def _ppo(logps, old, advantages, mask, eps, ratio=None, clip=None, pick=torch.maximum, reduce=None):
    """ppo.ppo_policy_loss with one known slip: the ratio, the clipped ratio, the bound or the reduction."""
    ratio = torch.exp(logps - old) if ratio is None else ratio
    clipped = ratio.clamp(1 - eps, 1 + eps) if clip is None else clip
    per_token = pick(-advantages * ratio, -advantages * clipped)
    return (per_token * mask).sum() / mask.sum() if reduce is None else reduce(per_token, mask)


MISTAKES["ppo_policy_loss"] = {
    "optimistic": Mistake(
        "the clip is on the wrong side: you took the optimistic bound. PPO's loss is max(-A r, -A clip(r)), the "
        "min of the two objectives, so moving the ratio past 1 +- eps never pays.",
        lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, pick=torch.minimum)),
    "no_clip": Mistake("the ratio is never clipped: take max(-A r, -A clip(r, 1 - eps, 1 + eps)).",
                       lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, pick=lambda x, y: x)),
    "clipped_only": Mistake(
        "keep the unclipped term too: max(-A r, -A clip(r)). With the clipped term alone, a ratio that moved the "
        "wrong way past the clip would not be pulled back.",
        lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, pick=lambda x, y: y)),
    "ratio_inverted": Mistake("the ratio is inverted: r = pi / pi_old = exp(logps - old_logps).",
                              lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, ratio=torch.exp(old - lp))),
    "log_ratio_clipped": Mistake(
        "clip the ratio r to [1 - eps, 1 + eps], not the log-ratio to [-eps, eps].",
        lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, clip=torch.exp((lp - old).clamp(-eps, eps)))),
    "mask_ignored": Mistake("padding is averaged in: average over completion tokens, (x * mask).sum() / mask.sum().",
                            lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, reduce=lambda x, _: x.mean())),
    "sum": Mistake("average over the completion tokens, (x * mask).sum() / mask.sum(), not their sum.",
                   lambda lp, old, a, m, eps: _ppo(lp, old, a, m, eps, reduce=lambda x, mm: (x * mm).sum())),
    "objective_not_loss": Mistake(
        "return a loss to minimise: the negative of the clipped objective, -min(A r, A clip(r)).",
        lambda lp, old, a, m, eps: -_ppo(lp, old, a, m, eps)),
}


def check_ppo_policy_loss(student):
    """Grade `ppo_policy_loss(logps, old_logps, advantages, mask, clip_range)` against ppo.ppo_policy_loss,
    values and gradients."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 6, generator=g) * 5
    logps = old + torch.randn(3, 6, generator=g) * 0.3  # ratios of about 0.5 to 2: many outside 1 +- eps
    advantages = torch.randn(3, 6, generator=g)
    mask = (torch.arange(6) < torch.tensor([6, 3, 5])[:, None]).float()
    hand = (torch.log(torch.tensor([0.5, 1.0, 1.5, 0.7])), torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, -1.0]),
            torch.ones(4))
    cases = [("hand-made: ratios 0.5, 1, 1.5, 0.7, advantages +-1, eps 0.2", (*hand, 0.2)),
             ("random, right-padded, eps 0.2", (logps, old, advantages, mask, 0.2)),
             ("random, right-padded, eps 0.1", (logps, old, advantages, mask, 0.1))]
    _grade("ppo_policy_loss", student, lambda *args: ppo.ppo_policy_loss(*args)[0], cases, grad=(0,))


SOLUTIONS.update({f.__name__: f for f in (completion_labels, sequence_logps, dpo_loss, implicit_reward, gradient_weight,
                                          optimal_policy_logps, kl_estimates, gae, ppo_policy_loss)})
