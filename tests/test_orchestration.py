"""The helpers the notebooks orchestrate with, each against the naive code it replaced (the loop
or comprehension a notebook used to hold) or a hand computation."""

import copy
import math
from types import SimpleNamespace

import datasets
import pandas as pd
import pytest
import torch
from learned import PAIRS

from dpo_core import evaluate, imdb, judges, methods, models, plotting, report, results, sampling, tasks, train
from dpo_core.checkpoint import Checkpoint
from dpo_core.run import Run
from dpo_core.data import collate_pairs, encode_pair, lm_chunks
from dpo_core.notebook import ParameterError, check_parameters, offline_objective
from dpo_core.reward import ScalarRewardModel, id_scorer, text_scorer
from dpo_core.sampling import sample
from dpo_core.tiny import byte_tokenizer, tiny_gpt2


@pytest.fixture
def tok():
    return byte_tokenizer()


def pair_examples(tok, copies=2):
    return [encode_pair(tok, *p, max_length=64) for p in PAIRS * copies]


def same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cycled_batches_read_one_permutation_from_position_batch_size_and_wrap():
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()
    # by hand: step 1 takes positions 2, 3; step 2 positions 4, 0 (wrapped); step 3 positions 1, 2
    expected = [[order[2], order[3]], [order[4], order[0]], [order[1], order[2]]]
    assert train.cycled_batches(5, 2, 3, seed=3) == expected
    assert train.cycled_batches(5, 2, 3, seed=3) == train.cycled_batches(5, 2, 3, seed=3)  # resume relies on it


def test_sft_stepper_is_one_sft_step_on_the_chunks(tok):
    chunks = lm_chunks(tok, ["a first review of a film", "and a second one, longer than the first"], 8)
    model = tiny_gpt2(seed=0)
    twin = copy.deepcopy(model)
    step = train.sft_stepper(model, torch.optim.SGD(model.parameters(), lr=0.1), chunks)
    metrics = step([1, 0])
    ids = torch.tensor([chunks[1], chunks[0]])
    loss = train.sft_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), ids, torch.ones_like(ids))
    assert metrics == {"loss": loss} and same_parameters(model, twin)


def test_held_out_nll_is_the_mean_token_cross_entropy_in_eval_mode(tok):
    chunks = lm_chunks(tok, ["a held-out review, read once before and once after training"], 6)
    model = tiny_gpt2(seed=1)
    ids = torch.tensor(chunks)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits[:, :-1]  # (N, T-1, V)
    by_hand = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean().item()
    model.train()
    assert evaluate.held_out_nll(model, chunks) == pytest.approx(by_hand, rel=1e-5)
    assert not model.training


def test_reward_model_stepper_steps_the_schedule(tok):
    examples = pair_examples(tok)
    model = ScalarRewardModel(tiny_gpt2(seed=0))
    twin = copy.deepcopy(model)
    optimizer, schedule = train.rmsprop_with_warmup(model.parameters(), 1e-3, warmup_steps=4)
    step = train.reward_model_stepper(model, optimizer, train.pair_batch_maker(examples, tok.pad_token_id), schedule)
    metrics = step([0, 2, 4])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)  # after one of four warm-up steps
    twin_optimizer = torch.optim.RMSprop(twin.parameters(), lr=1e-3 / 4)  # the lr of the first warm-up step
    expected = train.reward_model_step(twin, twin_optimizer, collate_pairs([examples[i] for i in (0, 2, 4)],
                                                                           tok.pad_token_id))
    assert metrics == expected and same_parameters(model, twin)


@pytest.mark.parametrize("name", ["dpo", "preferred_ft"])
def test_fit_offline_equals_a_naive_loop_of_preference_steps(tok, tmp_path, name):
    examples = pair_examples(tok)
    policy = models.disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    naive = copy.deepcopy(policy)
    batches = train.training_batches(len(examples), 3, 4, seed=0)
    options = {"label_smoothing": 0.1} if name == "dpo" else {}  # cDPO: the method's extra argument reaches the loss
    objective = methods.objective(name, 0.1, **options)
    optimizer, schedule = train.rmsprop_with_warmup(policy.parameters(), 1e-3, 2)
    evaluated = []
    checkpoint = Checkpoint(tmp_path / "c.pt", policy, optimizer, schedule, params={"name": name}, every=2)
    pairs = train.PairData(examples, batches, train.pair_batch_maker(examples, tok.pad_token_id))

    def fit():
        return train.fit_offline(Run(tmp_path, tmp_path), policy, reference, objective, optimizer, schedule, pairs,
                                 train.LoopOptions(evaluate=lambda step: {"n": evaluated.append(step) or 1.0},
                                                   eval_at=(0, 4), checkpoint=checkpoint))

    log, eval_rows = fit()
    naive_optimizer, naive_schedule = train.rmsprop_with_warmup(naive.parameters(), 1e-3, 2)
    naive_log = []
    for indices in batches:
        batch = collate_pairs([examples[i] for i in indices], tok.pad_token_id)
        ref = train.reference_logps(reference, batch) if objective.method.uses_reference else (None, None)
        naive_log.append(train.preference_step(naive, naive_optimizer, batch, objective, ref))
        naive_schedule.step()
    assert [{k: v for k, v in row.items() if k != "step"} for row in log] == naive_log
    assert same_parameters(policy, naive)
    assert evaluated == [0, 4] and [r["step"] for r in eval_rows] == [0, 4]
    assert fit() == (log, eval_rows) and evaluated == [0, 4]  # a finished run resumes to its end: nothing reruns
    assert same_parameters(policy, naive)


def test_best_of_n_points_pick_the_learned_best_of_the_first_n_and_score_it_by_gold():
    learned = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.95]])  # (P=2, K=4)
    gold = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7]])
    texts = [f"p{i}s{j}" for i in range(2) for j in range(4)]
    rows, samples = evaluate.best_of_n_points(learned, gold, texts, max_new_tokens=7)
    # by hand: N=1 picks sample 0 of each; N=2 picks 1 and 0; N=4 picks 1 and 3
    assert [r["setting"] for r in rows] == [1, 2, 4]
    assert [r["reward"] for r in rows] == pytest.approx([(0.2 + 0.1) / 2, (0.4 + 0.1) / 2, (0.4 + 0.7) / 2])
    assert [r["kl"] for r in rows] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    assert [s["text"] for s in samples if s["setting"] == 4] == ["p0s1", "p1s3"]
    assert all(r["completion_tokens"] == 7 and r["step"] == 0 for r in rows)


def test_scorers_score_prompt_plus_completion():
    class Recorder:
        def score_ids(self, sequences, pad_token_id):
            self.seen = (sequences, pad_token_id)
            return torch.tensor([float(len(s)) for s in sequences])

    recorder = Recorder()
    assert id_scorer(recorder, 0)([[1, 2], [3]], [[4], [5, 6]]).tolist() == [3.0, 3.0]
    assert recorder.seen == ([[1, 2, 4], [3, 5, 6]], 0)
    tok = byte_tokenizer()
    prompt, completion = tok("A fine", add_special_tokens=False)["input_ids"], tok(" film")["input_ids"]
    assert text_scorer(lambda texts: texts, tok)([prompt], [completion]) == ["A fine film"]


def test_imdb_pair_helpers_against_hand_computed_values(tok):
    texts = ["Great acting and a fine plot", "Dull"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"][:3] for t in texts]
    assert [tok.decode(c) for c in imdb.continuations(tok, texts, prompts, 4)] == ["at a", "l"]
    bang = tok("!", add_special_tokens=False)["input_ids"]
    assert imdb.prefixed_texts(tok, prompts, [bang, []]) == ["Gre!", "Dul"]
    pairs = datasets.Dataset.from_list([
        {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "chosen_reward": 0.9, "rejected_reward": 0.1},
        {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [4], "chosen_reward": 0.9, "rejected_reward": 0.3}])
    assert imdb.reference_samples(pairs, 10) == ([[1], [1], [1]], [[2], [3], [4]])  # distinct, first seen first
    assert imdb.reference_samples(pairs, 2) == ([[1], [1]], [[2], [3]])
    scores = torch.tensor([[0.9, 0.1, 0.3]])
    metrics = imdb.preference_metrics(pairs, 1, scores, [[2], [3, 3], [4, 4, 4]])
    assert metrics["n_pairs"] == 2 and metrics["n_ties"] == 1
    assert metrics["chosen_reward_mean"] == pytest.approx(0.9) and metrics["rejected_reward_mean"] == pytest.approx(0.2)
    assert metrics["completion_tokens_mean"] == 2 and metrics["reward_mean"] == pytest.approx(1.3 / 3)


def test_sample_texts_are_the_samplers_completions_with_or_without_their_prefix(tok):
    model = tiny_gpt2(seed=0).eval()
    prompts = [tok("Once", add_special_tokens=False)["input_ids"], tok("It", add_special_tokens=False)["input_ids"]]
    completions = sample(model, prompts, 5, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(11))
    texts = sampling.sample_texts(model, tok, prompts, 1.0, 5, seed=11, matmuls="fp32", with_prompt=True)
    assert texts == [tok.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)]
    assert sampling.sample_texts(model, tok, prompts, 1.0, 5, 11, "fp32") == [tok.decode(c) for c in completions]


def test_sample_texts_best_of_n_returns_the_scorers_pick(tok):
    model = tiny_gpt2(seed=0).eval()
    prompts = [tok("Once", add_special_tokens=False)["input_ids"], tok("It", add_special_tokens=False)["input_ids"]]
    pool = sample(model, [p for p in prompts for _ in range(3)], 6, 1.0, tok.eos_token_id, tok.pad_token_id,
                  torch.Generator().manual_seed(2))

    def longest_text(prompts, completions):  # a scorer whose pick can be read off the pool
        return torch.tensor([float(len(tok.decode(c))) for c in completions])

    picks = [max(pool[3 * i : 3 * i + 3], key=lambda c: len(tok.decode(c))) for i in range(2)]
    texts = sampling.sample_texts(model, tok, prompts, 1.0, 6, 2, "fp32", n=3, score=longest_text)
    assert texts == [tok.decode(c, skip_special_tokens=True) for c in picks]


def test_load_rows_limit_keeps_the_first_rows():
    everything = tasks.load_rows("fixture:hh-rlhf", "train")
    first = tasks.load_rows("fixture:hh-rlhf", "train", limit=5)
    assert len(first) == 5 and first[:]["chosen"] == everything[:5]["chosen"]
    assert len(tasks.load_rows("fixture:hh-rlhf", "train", limit=10**6)) == len(everything)


class LengthJudge:
    """Prefers the longer text: a judge whose verdicts can be computed by hand."""
    name = "length"

    def judge(self, contexts, candidates, references):
        return ["win" if len(c) > len(r) else "tie" if len(c) == len(r) else "loss"
                for c, r in zip(candidates, references)]


def test_sweep_policies_tags_samples_and_keeps_each_policys_rows():
    policies = [({"method": "a", "setting": 1.0}, lambda t: ["xx", "x"]), ({"method": "b"}, lambda t: ["", "xyz"])]
    rows, samples = judges.sweep_policies(policies, LengthJudge(), ["", ""], ["x", "x"], [0.0, 1.0])
    assert [(r["method"], r["temperature"], r["n_win"], r["n_tie"], r["n_loss"]) for r in rows] == [
        ("a", 0.0, 1, 1, 0), ("a", 1.0, 1, 1, 0), ("b", 0.0, 1, 0, 1), ("b", 1.0, 1, 0, 1)]
    assert [s["method"] for s in samples] == ["a"] * 4 + ["b"] * 4
    assert samples[0] == {"method": "a", "temperature": 0.0, "context": "", "candidate": "xx", "reference": "x",
                          "verdict": "win"}


def test_task_win_rates_judge_each_policys_sampled_responses(tok):
    model = tiny_gpt2(seed=0).eval()
    prompts = ["\n\nHuman: Hi there\n\nAssistant:", "\n\nHuman: Tell me more\n\nAssistant:"]
    references = ["ok", "a much longer reference answer"]
    rows, samples = tasks.win_rates([({"method": "m", "setting": 0.0}, model)], prompts, references, tok,
                                    LengthJudge(), [1.0], 6, seed=5, matmuls="fp32", strip=True)
    ids = [tok(p)["input_ids"] for p in prompts]
    by_hand = [tok.decode(c, skip_special_tokens=True).strip() for c in
               sample(model, ids, 6, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(5))]
    assert [s["candidate"] for s in samples] == by_hand
    assert [s["context"] for s in samples] == ["Hi there", "Tell me more"]
    assert len(rows) == 1 and rows[0]["n_win"] + rows[0]["n_tie"] + rows[0]["n_loss"] == 2


def test_sample_pool_is_k_samples_per_prompt_prompt_major(tok):
    model = tiny_gpt2(seed=0).eval()
    prompts = [tok("Once", add_special_tokens=False)["input_ids"], tok("It", add_special_tokens=False)["input_ids"]]
    repeated, completions, texts = imdb.sample_pool(model, prompts, 2, tok, 4, seed=9)
    assert repeated == [prompts[0], prompts[0], prompts[1], prompts[1]]
    assert completions == sample(model, repeated, 4, 1.0, tok.eos_token_id, tok.pad_token_id,
                                 torch.Generator().manual_seed(9))
    assert texts == imdb.prefixed_texts(tok, repeated, completions)


def test_normalized_on_pi_ref_has_mean_0_and_variance_1_on_pi_refs_samples():
    pairs = [{"prompt_ids": [1], "chosen_ids": [2, 2], "rejected_ids": [3]},
             {"prompt_ids": [4], "chosen_ids": [5, 5, 5], "rejected_ids": [2, 2]}]

    def length(prompts, completions):
        return torch.tensor([float(len(p) + len(c)) for p, c in zip(prompts, completions)])

    score, raw = imdb.normalized_on_pi_ref(length, pairs, 10)
    assert raw.tolist() == [3.0, 2.0, 4.0, 3.0]  # the four distinct samples, first seen first
    normal = score([[1], [1], [4], [4]], [[2, 2], [3], [5, 5, 5], [2, 2]])
    assert normal.mean().item() == pytest.approx(0, abs=1e-6) and normal.std().item() == pytest.approx(1)


def test_policy_and_reference_are_two_copies_and_only_the_reference_is_frozen(tmp_path, tok):
    results.save_model(tiny_gpt2(seed=4), tok, tmp_path / "model")
    policy, reference, _ = imdb.policy_and_reference(SimpleNamespace(sft_dir=tmp_path))
    assert policy is not reference and same_parameters(policy, reference)
    assert all(p.requires_grad for p in policy.parameters())
    assert not any(p.requires_grad for p in reference.parameters())


def test_merged_evaluator_calls_each_in_order_and_joins_their_metrics():
    calls = []
    merged = train.merged_evaluator(lambda s: calls.append("a") or {"x": s},
                                    lambda s: calls.append("b") or {"y": 2 * s})
    assert merged(3) == {"x": 3, "y": 6} and calls == ["a", "b"]


def test_with_intervals_keeps_the_unfinished_runs_list():
    frame = pd.DataFrame([{"run": "r", "method": "dpo", "setting": 0.1, "step": 0}])
    frame.attrs["unfinished"] = ["04/x"]
    trajectory = {"r": {"step": [0], "reward": torch.rand(1, 8).numpy(), "kl": torch.zeros(1, 8).numpy()}}
    merged = report.with_intervals(frame, trajectory, 100)
    assert merged.attrs["unfinished"] == ["04/x"] and {"reward_low", "reward_high"} <= set(merged.columns)


def test_checkpoint_ignores_only_parameters_that_cannot_change_the_state(tmp_path):
    model = torch.nn.Linear(2, 1)
    params = {"lr": 0.1, "log_every": 10, "checkpoint_every": 5, "judge": "reward:tiny"}
    Checkpoint(tmp_path / "c.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), params=params,
               ignore=("judge",)).save(3, [], [])

    def restored(**changes):
        return Checkpoint(tmp_path / "c.pt", model, torch.optim.SGD(model.parameters(), lr=0.1),
                          params={**params, **changes}, ignore=("judge",)).restore()

    assert restored(log_every=1, checkpoint_every=1, judge="chat:gpt-4")[0] == 3
    assert restored(lr=0.2) is None


def test_temperatures_are_checked_wherever_declared():
    def namespace(value):
        return {"__annotations__": {"temperatures": list}, "temperatures": value}

    assert check_parameters(namespace([0.0, 1.0])) == {"temperatures": [0.0, 1.0]}
    for bad in ([], [-0.5], ["hot"]):
        with pytest.raises(ParameterError, match="temperatures"):
            check_parameters(namespace(bad))


def test_offline_objective_checks_name_setting_and_the_methods_own_options():
    dpo = offline_objective("dpo", 0.1, {})
    assert dpo.method.name == "dpo" and dpo.setting == 0.1 and dpo.options == {"label_smoothing": 0.0}  # the default
    assert offline_objective("dpo", 0.1, {"label_smoothing": 0.2}).options == {"label_smoothing": 0.2}
    assert offline_objective("ipo", 0.1, {}).options == {}
    for args, message in ((("ppo", 0.1, {}), "not an offline method"), (("dpo", 0.0, {}), "beta must be > 0"),
                          (("unlikelihood", 2.0, {}), r"alpha must be in \[0, 1\]"),
                          (("ipo", 0.1, {"label_smoothing": 0.1}), "ipo takes no option 'label_smoothing'"),
                          (("dpo", 0.1, {"label_smoothing": 0.5}), r"label_smoothing must be in \[0, 0.5\)"),
                          (("dpo", 0.1, {"label_smothing": 0.1}), "its options are \\['label_smoothing'\\]")):
        with pytest.raises(ParameterError, match=message):
            offline_objective(*args)


def test_trainable_follows_train_top_layers():
    model = tiny_gpt2(seed=0)
    n = models.train_top_layers(model, 1)
    assert sum(p.numel() for p in models.trainable(model)) == n < sum(p.numel() for p in model.parameters())


def test_win_rate_figure_writes_png_and_pdf(tmp_path):
    frame = pd.DataFrame([{"method": "dpo", "setting": 0.1, "temperature": t, "win_rate": 0.5, "stderr": 0.1}
                          for t in (0.0, 1.0)])
    paths = plotting.win_rate_figure(frame, "temperature", "title", tmp_path, "wr")
    assert [p.name for p in paths] == ["wr.png", "wr.pdf"] and all(p.stat().st_size > 0 for p in paths)
