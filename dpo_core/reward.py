"""The gold sentiment reward: p(positive | prompt + completion) from a text classifier.

The paper scores IMDb completions with siebert/sentiment-roberta-large-english and plots
the probability of the positive class (Fig. 2's reward axis spans 0.4-1.0). Offline, the
same class wraps a MiniLM fine-tuned here on Rotten Tomatoes snippets
(`finetune_sentiment_classifier`), whose quality is measured on held-out Pang & Lee data.

The classifier has its own tokenizer, so the reward takes *text*: decode the policy's ids
with skip_special_tokens=True and pass prompt + completion together.
"""

import json
import math
import time

import torch

from dpo_core.precision import weights_fixed


def positive_label_index(id2label):
    """Index of the positive class, read from the config rather than assumed to be 1."""
    matches = [int(i) for i, label in id2label.items() if str(label).lower() in ("positive", "pos", "label_1")]
    if len(matches) != 1:
        raise ValueError(f"cannot tell the positive class from id2label={id2label}")
    return matches[0]


class SentimentReward:
    """Scores texts in batches: returns p(positive), shape (N,), fp32, in [0, 1].

    Eval mode, no gradient, truncation to the classifier's maximum length, and texts
    sorted by length before batching so padding is minimal; the result does not depend
    on the batch size (up to float rounding).
    """

    def __init__(self, model, tokenizer, batch_size=64, max_length=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", 512)
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta"):
            limit -= 2  # RoBERTa's positions start at padding_idx + 1
        self.max_length = min(max_length or limit, limit)
        self.positive_index = positive_label_index(model.config.id2label)

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(source, dtype="float32")
        return cls(model, AutoTokenizer.from_pretrained(source), **kwargs)

    @torch.no_grad()
    def logits(self, texts):
        """log p(positive) - log p(negative) per text, (N,): a tie-breaker where the
        probability saturates."""
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("SentimentReward scores text: decode token ids first (skip_special_tokens=True)")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts))
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with weights_fixed(self.model.device):
                log_probs = torch.log_softmax(self.model(**enc).logits.float(), -1)  # (b, n_labels)
            positive = log_probs[:, self.positive_index]
            negative = torch.logsumexp(
                log_probs[:, [j for j in range(log_probs.shape[1]) if j != self.positive_index]], -1
            )
            out[idx] = positive - negative
        return out

    def __call__(self, texts):
        return torch.sigmoid(self.logits(texts))


def tie_rate(scores):
    """Fraction of within-prompt pairs whose scores are exactly equal.

    Args:
        scores: (N, K) rewards of K completions for each of N prompts.
    Returns:
        float in [0, 1], over the N * K(K-1)/2 pairs.
    """
    scores = torch.as_tensor(scores)
    i, j = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1)
    return (scores[:, i] == scores[:, j]).float().mean().item()


def tiny_classifier(seed=0):
    """A random-init 2-label BERT over the byte tokenizer, for tests and smoke runs."""
    from transformers import BertConfig, BertForSequenceClassification

    from dpo_core.tiny import byte_tokenizer

    config = BertConfig(vocab_size=257, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, num_labels=2, pad_token_id=256,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    return model, byte_tokenizer()


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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dpo_core.assets import load_corpus

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}
        )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = min(max_steps or epochs * steps_per_epoch, epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total)
    model.train()
    step = 0
    while step < total:
        for batch_idx in torch.randperm(len(train_set), generator=generator).split(batch_size):
            rows = train_set[batch_idx.tolist()]
            enc = tokenizer(rows["text"], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, torch.tensor(rows["label"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % log_every == 0 or step == total:
                print(f"[reward fine-tune] step {step}/{total} loss {loss.item():.4f}")
            if step == total:
                break
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


class ScalarRewardModel(torch.nn.Module):
    """A learned reward r_phi(x, y): a causal LM's transformer body and a linear head on the
    hidden state of the last real token, as the paper's RLHF baseline initialises its reward
    model from the LM (App. C.1). Trained with the Bradley-Terry loss, Eq. 2."""

    def __init__(self, causal_lm):
        super().__init__()
        self.body = causal_lm.base_model  # without the LM head
        self.head = torch.nn.Linear(causal_lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)  # starts indifferent: every pair at p = 1/2

    def forward(self, input_ids, attention_mask):
        """(B, T) right-padded ids -> (B,) scores."""
        from dpo_core.logprobs import position_ids_from_mask

        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
        last = attention_mask.sum(-1) - 1  # (B,)
        return self.head(hidden[torch.arange(len(last)), last]).squeeze(-1)

    def score_pairs(self, batch):
        """(chosen, rejected) scores of a collated preference batch, one forward pass."""
        from dpo_core.logprobs import concatenated_inputs

        inputs = concatenated_inputs(batch)
        scores = self(inputs["input_ids"], inputs["attention_mask"])
        n = batch["chosen_input_ids"].shape[0]
        return scores[:n], scores[n:]

    @torch.no_grad()
    def score_ids(self, sequences, pad_token_id, batch_size=32):
        """Scores of token-id sequences (prompt + completion), (N,)."""
        from dpo_core.logprobs import pad_right

        out = []
        for start in range(0, len(sequences), batch_size):
            rows = [torch.tensor(s) for s in sequences[start : start + batch_size]]
            length = max(len(r) for r in rows)
            mask = pad_right([torch.ones_like(r) for r in rows], length, 0)
            out.append(self(pad_right(rows, length, pad_token_id), mask))
        return torch.cat(out)
