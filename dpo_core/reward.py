"""The gold sentiment reward: p(positive | prompt + completion) from a text classifier.

The paper scores IMDb completions with siebert/sentiment-roberta-large-english and plots
the probability of the positive class (Fig. 2's reward axis spans 0.4-1.0). Offline, the
same class wraps a MiniLM fine-tuned on Rotten Tomatoes snippets (`gold.finetune_sentiment_classifier`,
beside the corpora), whose quality is measured on held-out Pang & Lee data.

    SentimentReward      p(positive) of a classifier, batch-size independent, eval mode
    ScalarRewardModel    the learned Bradley-Terry reward model r_phi (Eq. 2) of the RLHF baseline
    id_scorer, text_scorer   either as score(prompts, completions) of token ids (PPO, Best-of-N)
    tie_rate             exact ties among a prompt's scores

The classifier has its own tokenizer, so the reward takes *text*: decode the policy's ids
with skip_special_tokens=True and pass prompt + completion together.
"""

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from dpo_core import progress
from dpo_core.data import collate_pairs
from dpo_core.logprobs import concatenated_inputs, pad_right, position_ids_from_mask
from dpo_core.tiny import byte_tokenizer


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
        with progress.bar(len(texts), "gold reward", enabled=len(texts) > self.batch_size, leave=False) as bar:
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                # the judge runs in fp32 even inside a bf16 run: its numbers must not depend on the machine
                with torch.autocast(self.model.device.type, enabled=False):
                    log_probs = torch.log_softmax(self.model(**enc).logits.float(), -1)  # (b, n_labels)
                positive = log_probs[:, self.positive_index]
                negative = torch.logsumexp(
                    log_probs[:, [j for j in range(log_probs.shape[1]) if j != self.positive_index]], -1
                )
                out[idx] = positive - negative
                bar.update(len(idx))
        return out

    def __call__(self, texts):
        return torch.sigmoid(self.logits(texts))


def id_scorer(reward_model, pad_token_id):
    """score(prompts, completions) -> (N,): a learned reward model on the ids of prompt + completion
    (PPO's signal, Best-of-N's ranking)."""
    def score(prompts, completions):
        return reward_model.score_ids([p + c for p, c in zip(prompts, completions)], pad_token_id)
    return score


def text_scorer(reward, tokenizer):
    """score(prompts, completions) -> (N,): a text reward (the gold classifier) on prompt + completion
    decoded without special tokens (PPO-GT's signal)."""
    def score(prompts, completions):
        return reward([tokenizer.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)])
    return score


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
    config = BertConfig(vocab_size=257, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, num_labels=2, pad_token_id=256,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    return model, byte_tokenizer()


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
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
        last = attention_mask.sum(-1) - 1  # (B,)
        return self.head(hidden[torch.arange(len(last)), last]).squeeze(-1)

    def score_pairs(self, batch):
        """(chosen, rejected) scores of a collated preference batch, one forward pass."""
        inputs = concatenated_inputs(batch)
        scores = self(inputs["input_ids"], inputs["attention_mask"])
        n = batch["chosen_input_ids"].shape[0]
        return scores[:n], scores[n:]

    @torch.no_grad()
    def pair_correct(self, examples, pad_token_id, batch_size=32):
        """Per `make_pair` example, whether its chosen completion scores higher (a tie is wrong): (N,) bool."""
        was_training = self.training
        self.eval()
        correct = []
        for start in range(0, len(examples), batch_size):
            chosen, rejected = self.score_pairs(collate_pairs(examples[start : start + batch_size], pad_token_id))
            correct.append((chosen > rejected).cpu())
        self.train(was_training)
        return torch.cat(correct)

    def pair_accuracy(self, examples, pad_token_id, batch_size=32):
        """Share of `make_pair` examples whose chosen completion scores higher (ties count as wrong)."""
        return self.pair_correct(examples, pad_token_id, batch_size).float().mean().item()

    @torch.no_grad()
    def score_ids(self, sequences, pad_token_id, batch_size=32):
        """Scores of token-id sequences (prompt + completion), (N,)."""
        out = []
        for start in range(0, len(sequences), batch_size):
            rows = [torch.tensor(s) for s in sequences[start : start + batch_size]]
            length = max(len(r) for r in rows)
            mask = pad_right([torch.ones_like(r) for r in rows], length, 0)
            out.append(self(pad_right(rows, length, pad_token_id), mask))
        return torch.cat(out)
