"""The gold reward's recipe and its measured quality: all-MiniLM-L6-v2 with a 2-label head,
fine-tuned once on the Rotten Tomatoes snippets (the ones that are not Pang & Lee sentences) and
checked on the held-out Pang & Lee sentences and reviews (ROC-AUC, accuracy; quality.json).
`assets.load_reward("minilm-sentiment")` loads what `prepare_minilm_sentiment` cached.

    finetune_sentiment_classifier   the fine-tune through the one loop (train.train_loop), saved with quality.json
    prepare_minilm_sentiment        it, once, into the asset cache, with every file's sha256 (MANIFEST)
    classifier_quality, roc_auc     accuracy and ROC-AUC of a SentimentReward on labelled text
"""

import json
import math
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpo_core.assets import (CORPORA, load_corpus, minilm_base_dir, minilm_sentiment_dir, prepare_corpus,
                             write_manifest)
from dpo_core.results import atomic
from dpo_core.reward import SentimentReward
from dpo_core.train import LoopOptions, apply_loss, train_loop


def roc_auc(scores, labels):
    """Area under the ROC curve by the rank statistic (ties count one half)."""
    scores, labels = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels).bool()
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return (greater / (len(pos) * len(neg))).item()


def classifier_quality(reward, dataset):
    """Accuracy (threshold 0.5) and ROC-AUC of a SentimentReward on a labelled Dataset."""
    probs = reward(dataset["text"])
    labels = torch.tensor(dataset["label"])
    return {"n": len(labels), "accuracy": ((probs > 0.5).long() == labels).float().mean().item(),
            "roc_auc": roc_auc(probs, labels)}


def finetune_sentiment_classifier(base_dir, train_set, out_dir, epochs=1, max_steps=None, batch_size=32,
                                  max_length=64, lr=5e-5, seed=0, eval_sets=None, log_every=25):
    """Fine-tune a 2-label head on `base_dir` (a pretrained encoder) on `train_set` (text, label),
    save it to `out_dir` with quality.json (accuracy, AUC on `eval_sets`, timings).

    Defaults follow the measured recipe: 1 epoch, batch 32, 64 tokens, AdamW 5e-5, linear decay.
    """
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.random.fork_rng(devices=[]):  # the new head's init
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}
        )
    generator = torch.Generator().manual_seed(seed)
    every_step = epochs * math.ceil(len(train_set) / batch_size)
    total = min(max_steps or every_step, every_step)
    batches = [b.tolist() for _ in range(epochs)
               for b in torch.randperm(len(train_set), generator=generator).split(batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total)

    def step(indices):
        rows = train_set[indices]
        enc = tokenizer(rows["text"], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(model.train()(**enc).logits, torch.tensor(rows["label"]))
        apply_loss(optimizer, loss, "classifier loss")
        schedule.step()
        return {"loss": loss.item()}

    train_loop(step, batches[:total], LoopOptions(log_every=log_every, desc="gold reward fine-tune"))
    train_seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    reward = SentimentReward(model, tokenizer, max_length=256)
    if eval_sets is None:
        eval_sets = {name: load_corpus(name) for name in ("pang-lee-sentences", "pang-lee-reviews")}
    quality = {name: classifier_quality(reward, data) for name, data in eval_sets.items()}
    report = {"train_examples": len(train_set), "steps": total, "batch_size": batch_size, "max_length": max_length,
              "lr": lr, "seed": seed, "train_seconds": round(train_seconds, 1), "eval_max_length": 256,
              "quality": quality}
    (out_dir / "quality.json").write_text(json.dumps(report, indent=2))
    print(f"[reward fine-tune] held-out quality: {json.dumps(quality)}")
    return report




def prepare_minilm_sentiment(**finetune_kwargs):
    """Fine-tune MiniLM on the rotten-tomatoes snippets once and cache it with its measured
    quality on the held-out Pang & Lee sentences and reviews (quality.json) and the sha256 of
    every file (MANIFEST), which `load_reward` checks: a cache a teacher copies onto students'
    machines ($DPO_CACHE_DIR) is refused if a file came across damaged."""
    final = minilm_sentiment_dir()
    if (final / "config.json").is_file():
        return final
    for name in CORPORA:
        prepare_corpus(name)
    with atomic(final, folder=True) as tmp:
        finetune_sentiment_classifier(minilm_base_dir(), load_corpus("rotten-tomatoes"), tmp, **finetune_kwargs)
        write_manifest(tmp)
    return final
