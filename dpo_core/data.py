"""Preference pairs as token ids, and their collation into right-padded batches.

Token ids are kept end to end: what was sampled is exactly what is scored and trained on.
Text enters once, through `encode_pair`, which tokenizes each prompt + completion as one text
and splits the ids where the prompt's own tokens stop matching (`split_prompt`), so that the
ids decode to exactly the text, whatever the tokenizer does at word starts (SentencePiece's
"▁", GPT-2's "Ġ"), and the prompt's ids are an exact prefix of both sequences.
"""

import warnings

import torch

from dpo_core.logprobs import pad_right


def require_columns(dataset, columns, name):
    """`dataset` (a datasets.Dataset) unchanged, or a clear error naming the missing columns."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset {name!r} lacks column(s) {missing} (it has {dataset.column_names}); "
                         f"use a dataset with columns {list(columns)}, or rename its columns to these")
    return dataset


def _check_ids(name, ids):
    if len(ids) == 0:
        raise ValueError(f"empty {name}: every pair needs a non-empty prompt and two non-empty completions")


def make_pair(prompt_ids, chosen_ids, rejected_ids, max_length):
    """One preference example: prompt + chosen and prompt + rejected, labels masking the prompt.

    Args:
        prompt_ids, chosen_ids, rejected_ids: lists of token ids.
        max_length: the longest sequence the model may see; longer input is an error, never
            silently truncated (chosen and rejected would be cut differently).
    Returns:
        dict of lists: chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels.
    """
    _check_ids("prompt", prompt_ids)
    _check_ids("chosen completion", chosen_ids)
    _check_ids("rejected completion", rejected_ids)
    if list(chosen_ids) == list(rejected_ids):
        raise ValueError("chosen equals rejected: a pair needs two different completions (drop exact ties)")
    example = {}
    for side, completion in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        ids = list(prompt_ids) + list(completion)
        if len(ids) > max_length:
            raise ValueError(
                f"{side} sequence has {len(ids)} tokens > max_length={max_length}; "
                "raise max_length or shorten the prompt/completion"
            )
        example[f"{side}_input_ids"] = ids
        example[f"{side}_labels"] = [-100] * len(prompt_ids) + list(completion)
    return example


def special_prefix(tokenizer):
    """The ids a tokenizer puts before any text (Llama's BOS; none for GPT-2 or SmolLM2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def encode_prompt(tokenizer, prompt):
    """A prompt's ids as the model should read them before sampling: the special prefix + the text."""
    return special_prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def common_prefix_length(a, b):
    """Number of leading entries `a` and `b` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def split_prompt(tokenizer, prompt, completions):
    """Tokenize each `prompt + completion` as one text and split it into a shared prompt part
    and one completion part per text.

    Tokenizing the completion on its own would add what a tokenizer adds at a text's start: a
    SentencePiece/Metaspace tokenizer (Llama) prepends "▁", so "movie " + "deserves" decodes as
    "movie  deserves". Instead the split falls where the ids of the whole text stop agreeing with
    those of the prompt alone (and of each other), so `prompt_ids + completion_ids` is exactly
    the tokenization of the whole text, decoding to `prompt + completion`.

    A token can straddle the boundary: GPT-2 reads "The movie was" + "n't" as "...Ġwasn", "'t";
    SentencePiece attaches a prompt's trailing space to the completion's first word. That token
    then belongs to the completion (it is scored, a few prompt characters included), the shared
    prompt is one token shorter than the prompt alone, and `straddled` is True. TRL warns in
    this case and keeps a prompt that is not a prefix of the text; here the text stays exact.

    Returns:
        prompt_ids, [completion_ids per completion], straddled (bool).
    """
    prefix = special_prefix(tokenizer)
    alone = prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    wholes = [prefix + tokenizer(prompt + c, add_special_tokens=False)["input_ids"] for c in completions]
    n = min(common_prefix_length(alone, whole) for whole in wholes)
    return alone[:n], [whole[n:] for whole in wholes], n < len(alone)


def encode_pair(tokenizer, prompt, chosen, rejected, max_length, append_eos=True):
    """Text pair -> `make_pair` example, tokenized by `split_prompt` (the ids decode to exactly
    prompt + chosen and prompt + rejected; a boundary-straddling token warns and is kept whole).

    append_eos (default, as in TRL): one EOS ends each completion, so that the policy learns to
    stop: right for complete answers (TL;DR summaries, HH responses). Pass False for truncated
    text, which must not teach an ending; the IMDb pairs never come here, they are sampled ids
    (`make_pair`) that hold an EOS only where the sampler drew one.
    """
    prompt_ids, completions, straddled = split_prompt(tokenizer, prompt, [chosen, rejected])
    if straddled:
        warnings.warn(f"a token straddles the end of the prompt {prompt[-20:]!r}: it is scored with the completion "
                      "(the ids still decode to the exact text); end prompts at a word boundary to avoid it",
                      stacklevel=2)
    if append_eos:
        completions = [ids + [tokenizer.eos_token_id] for ids in completions]
    return make_pair(prompt_ids, *completions, max_length=max_length)


def collate_pairs(examples, pad_token_id):
    """Right-pad a list of `make_pair` examples into (B, T) tensors per side, with
    attention masks; labels are padded with -100 so padding never counts."""
    batch = {}
    for side in ("chosen", "rejected"):
        ids = [torch.tensor(e[f"{side}_input_ids"]) for e in examples]
        labels = [torch.tensor(e[f"{side}_labels"]) for e in examples]
        length = max(len(x) for x in ids)
        batch[f"{side}_input_ids"] = pad_right(ids, length, pad_token_id)
        batch[f"{side}_labels"] = pad_right(labels, length, -100)
        batch[f"{side}_attention_mask"] = pad_right([torch.ones_like(x) for x in ids], length, 0)
    return batch


def preference_pairs(scores):
    """All pairs of one prompt's completions, ordered by gold reward (App. C.1; ARCHITECTURE.md, the IMDb data flow).

    With K = 4 completions this gives the paper's C(4, 2) = 6 pairs per prefix. Exact ties
    carry no preference and are dropped, and counted so the tie rate can be reported.

    Args:
        scores: K gold rewards of one prompt's completions.
    Returns:
        pairs: list of (chosen_index, rejected_index) with scores[chosen] > scores[rejected];
        n_ties: the number of dropped pairs.
    """
    pairs, n_ties = [], 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if scores[i] == scores[j]:
                n_ties += 1
            else:
                pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs, n_ties


def preference_rows(prompts, completions, scores):
    """The pair rows of a sampled preference set (Section 6 and App. C.1): for each
    prompt, every pair of its K completions ordered by gold reward (`preference_pairs`: exact ties
    dropped and counted), and pairs of identical completions dropped (they tie by construction).

    Args:
        prompts: N prompts (lists of ids); completions: N * K lists of ids, prompt by prompt;
        scores: (N, K) gold rewards.
    Returns:
        rows (dicts of prompt_ids, chosen_ids, rejected_ids, chosen_reward, rejected_reward), n_ties.
    """
    k = len(completions) // len(prompts)
    rows, n_ties = [], 0
    for i, prompt in enumerate(prompts):
        pairs, ties = preference_pairs(scores[i].tolist())
        n_ties += ties
        for w, l in pairs:
            chosen, rejected = completions[i * k + w], completions[i * k + l]
            if chosen != rejected:
                rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                             "chosen_reward": float(scores[i, w]), "rejected_reward": float(scores[i, l])})
    return rows, n_ties


def split_by_prompt(prompts, held_out_fraction, seed):
    """(train indices, held-out indices) of rows whose prompt is in a seeded held-out share of the
    distinct prompts: every pair of a held-out prompt is held out, so accuracy on them measures
    generalisation to unseen prompts, not to other pairs of seen ones."""
    distinct = sorted({tuple(p) for p in prompts})
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = {distinct[i] for i in order[: max(1, round(held_out_fraction * len(distinct)))]}
    flags = [tuple(p) in held_out for p in prompts]
    return [i for i, h in enumerate(flags) if not h], [i for i, h in enumerate(flags) if h]


def first_prompts(prompts, n):
    """Indices of the rows whose prompt is among the first `n` distinct prompts, in order of first
    appearance: the pairs of a smaller preference set nested in a larger one (the data-scaling study).
    Raises if there are fewer than `n` distinct prompts."""
    order = list(dict.fromkeys(tuple(p) for p in prompts))
    if len(order) < n:
        raise ValueError(f"{n} prompts asked for, the preference set has {len(order)}")
    keep = set(order[:n])
    return [i for i, p in enumerate(prompts) if tuple(p) in keep]


def rows_on_other_prompts(prompts, seen_prompts):
    """Indices of the rows whose prompt is not among `seen_prompts`: a held-out preference set kept
    disjoint from a training set. Prompts are 2-8 token review openings, so two reviews can open
    alike ("note :"); such a prompt is the same prompt, and its held-out pairs are dropped."""
    seen = {tuple(p) for p in seen_prompts}
    return [i for i, p in enumerate(prompts) if tuple(p) not in seen]


def review_prefixes(tokenizer, texts, min_tokens, max_tokens, seed):
    """The paper's IMDb prompts: the first 2-8 tokens of each review (App. C.1), the length
    drawn uniformly per review with a seeded generator. Returns lists of ids."""
    g = torch.Generator().manual_seed(seed)
    prefixes = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = int(torch.randint(min_tokens, max_tokens + 1, (1,), generator=g))
        prefixes.append(ids[:n])
    return prefixes


def sentence_prefixes(tokenizer, texts, per_text, min_tokens, max_tokens, seed):
    """More prompts than texts, for the data-scaling study: the first 2-8 tokens (drawn as in
    `review_prefixes`) of each text's first `per_text` lines, text-major (text 0's lines, then text
    1's, ...). Pang & Lee's reviews hold one sentence a line, so line 0 is the paper's prompt (the
    review's opening) and the others open its next sentences. Texts with fewer lines give fewer."""
    lines = [line for text in texts for line in [l for l in text.split("\n") if l.strip()][:per_text]]
    return review_prefixes(tokenizer, lines, min_tokens, max_tokens, seed)


def lm_chunks(tokenizer, texts, length):
    """Consecutive `length`-token windows of the texts, each text ended by EOS, for SFT."""
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
