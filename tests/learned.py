"""The tests whose outcome is learned by a short training run, as procedures that return the
measured quantity. The tests assert a threshold on it; `tests/measure_margins.py` runs the same
procedures over many seeds and every CPU kernel set, which is how each threshold was chosen
(tests/MARGINS.md): a different CPU rounds differently, the run drifts like a reseeded one,
and a threshold far outside the seed spread cannot be crossed by it.
"""

import copy
from pathlib import Path

import torch

from dpo_core.data import collate_pairs, encode_pair
from dpo_core.logprobs import concatenated_forward
from dpo_core.losses import bradley_terry_loss
from dpo_core.models import disable_dropout
from dpo_core.ppo import AdaptiveKLController, PPOConfig, PPOModels, ValueHead, ppo_step
from dpo_core.reward import ScalarRewardModel
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import dpo_step, reference_logps

# Reward model: sentiment words after varied subjects. Held out: whole subjects (prompts), as
# notebook 05 holds out prompts. Holding out *words* instead generalised on some seeds and not on
# others (held-out mean margin -0.63 to 8.6 over 20 seeds): byte features of unseen words are luck.
GOOD = ["great", "superb", "lovely", "moving", "brilliant", "fine", "a joy", "wonderful"]
BAD = ["awful", "dull", "boring", "a mess", "terrible", "weak", "tedious", "bad"]
SUBJECTS = ["The film was", "Acting:", "Overall", "The plot is", "Its score is", "I found it"]


def toy_pairs(subjects, tok, words_good=GOOD, words_bad=BAD):
    return [encode_pair(tok, s, f" {g}.", f" {b}.", 64) for s in subjects for g, b in zip(words_good, words_bad)]


def reward_model_run(seed=0, steps=150):
    """Bradley-Terry training (Eq. 2) of a tiny reward model on four subjects' pairs. Returns the
    scores at init and the chosen - rejected score margins on training and held-out-subject pairs."""
    tok = byte_tokenizer()
    model = ScalarRewardModel(tiny_gpt2(seed=seed))
    train = collate_pairs(toy_pairs(SUBJECTS[:4], tok), tok.pad_token_id)
    held_out = collate_pairs(toy_pairs(SUBJECTS[4:], tok), tok.pad_token_id)
    with torch.no_grad():
        init = torch.cat(model.score_pairs(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        chosen, rejected = model.score_pairs(train)
        loss = bradley_terry_loss(chosen, rejected).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        margins = {name: torch.sub(*model.score_pairs(b)) for name, b in (("train", train), ("held_out", held_out))}
    return init, margins


PAIRS = [
    ("The movie was", " wonderful, I loved it.", " dull and far too long."),
    ("Acting", " superb.", " wooden, lifeless."),
    ("Overall this film", " is a joy", " is a mess from start to finish"),
    ("I", " would watch it again", " walked out"),
]


def dpo_one_step_gain(seed=0, lr=1e-3):
    """rewards/margins after one Adam step of Eq. 7 minus before (before is 0: pi = pi_ref)."""
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=seed))
    reference = copy.deepcopy(policy).requires_grad_(False)
    batch = collate_pairs([encode_pair(tok, *p, max_length=64) for p in PAIRS], tok.pad_token_id)
    ref_chosen, ref_rejected = reference_logps(reference, batch)
    before = dpo_step(policy, torch.optim.Adam(policy.parameters(), lr=lr), batch, ref_chosen, ref_rejected, beta=0.1)
    with torch.no_grad():
        chosen, rejected = concatenated_forward(policy, batch)
    after = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return after.mean().item() - before["rewards/margins"]


def low_token_share(prompts, completions):
    """A toy reward: the share of a completion's tokens with ids below 128 (half the bytes)."""
    return [sum(t < 128 for t in c) / len(c) for c in completions]


def ppo_score_gain(seed=0, iterations=15):
    """Mean toy score of the last of `iterations` PPO iterations minus the first's."""
    tok = byte_tokenizer()
    policy = tiny_gpt2(seed=seed)
    reference = copy.deepcopy(policy).requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # the head's init must not depend on earlier tests
        torch.manual_seed(seed)
        value_head = ValueHead(policy.config.n_embd)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ["Hi", "The", "So", "Why"] * 4]
    optimizer = torch.optim.Adam(list(policy.parameters()) + list(value_head.parameters()), lr=3e-3)
    controller = AdaptiveKLController(init_kl_coef=0.01, target=6.0, horizon=10000)
    g = torch.Generator().manual_seed(seed)
    models, config = PPOModels(policy, value_head, reference), PPOConfig(8, tok.pad_token_id, tok.eos_token_id)
    first = ppo_step(models, optimizer, prompts, low_token_share, controller, g, config)
    for _ in range(iterations):
        last = ppo_step(models, optimizer, prompts, low_token_share, controller, g, config)
    return first, last


SAMPLING_PROMPTS = ["The film", "I", "Honestly, the acting was"]


def greedy_top_gap(seed=2, max_new_tokens=12):
    """The smallest gap between the best and second-best logit along each prompt's greedy path:
    greedy decoding by two code paths (KV-cache batch, `generate` one prompt at a time) agrees
    as long as their logits differ by less than this."""
    model, tok = tiny_gpt2(seed=seed), byte_tokenizer()
    gaps = []
    for prompt in SAMPLING_PROMPTS:
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=256,
                             eos_token_id=None, output_scores=True, return_dict_in_generate=True)
        for scores in out.scores:
            top = scores[0].topk(2).values
            gaps.append((top[0] - top[1]).item())
    return min(gaps)


POSITIVE = ["this movie was absolutely wonderful , i loved it !", "a moving , beautifully acted film ."]
NEGATIVE = ["a dull , lifeless mess of a film .", "the worst movie i have ever sat through ."]


def gold_reward_finetune(seed=0, out_dir=None, max_steps=40):
    """A 40-step fine-tune of the real MiniLM on real snippets (the gold reward's recipe, cut
    short). Returns the held-out AUC and the gap between the lowest clearly positive and the
    highest clearly negative example's p(positive)."""
    import tempfile

    from dpo_core import assets
    from dpo_core.gold import finetune_sentiment_classifier
    from dpo_core.reward import SentimentReward

    for name in assets.CORPORA:
        assets.prepare_corpus(name)
    held_out = assets.load_corpus("pang-lee-sentences").shuffle(seed=0).select(range(400))
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(out_dir or tmp)
        report = finetune_sentiment_classifier(
            assets.minilm_base_dir(), assets.load_corpus("rotten-tomatoes"), out_dir, max_steps=max_steps,
            eval_sets={"pang-lee-sentences[:400]": held_out}, log_every=20, seed=seed,
        )
        scores = SentimentReward.from_pretrained(out_dir)(POSITIVE + NEGATIVE)
    return {"roc_auc": report["quality"]["pang-lee-sentences[:400]"]["roc_auc"],
            "clear_gap": (scores[:2].min() - scores[2:].max()).item(),
            "clear_mean_gap": (scores[:2].mean() - scores[2:].mean()).item(), "scores": scores.tolist()}
