"""Ancestral sampling from a causal LM with a KV cache, returning token ids.

The IMDb experiment samples completions twice: to build preference pairs from pi_ref and
to evaluate each policy. Both need *pure* sampling (temperature 1, no top-k, no top-p, no
minimum length): anything else biases the KL estimate and can make it negative. Ids are
returned, never text, so what is sampled is exactly what gets scored and trained on.

Sampling draws by inverse CDF (one uniform per row, `searchsorted` on the cumulative
probabilities, in two levels: `draw`): exact up to the fp32 rounding of the sums, and on CPU
faster than `torch.multinomial` or Gumbel-max.
"""

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dpo_core import progress
from dpo_core.precision import autocast, prepacked_linears, weights_fixed

# tokens per block of the two-level inverse CDF (`draw`)
DRAW_BLOCK = 256


def draw(logits, temperature, generator=None):
    """One token per row from softmax(logits / temperature); temperature 0 is argmax.
    (B, V) -> (B,).

    Inverse CDF in two levels: the block of DRAW_BLOCK tokens that holds the uniform, from the
    cumulative sums of block totals, then the token within that block. The same draw as a search
    in the full cumulative sum, up to the sums' fp32 rounding, without the full cumulative sum:
    a sequential scan over V that took most of a decode step's sampling time."""
    if temperature == 0:
        return logits.argmax(-1)
    # one fp32 copy (two where the vocabulary is padded), then in place: each fresh (B, V) buffer
    # costs its page faults
    weights = logits.to(torch.float32, copy=True, memory_format=torch.contiguous_format)  # (B, V)
    if temperature != 1:  # x / 1 == x: skip the pass
        weights.div_(temperature)
    weights = weights.sub_(weights.amax(-1, keepdim=True)).exp_()  # probabilities times a row constant
    rows, vocab = weights.shape
    if vocab % DRAW_BLOCK:  # zero weight for the padding: never drawn
        weights = torch.nn.functional.pad(weights, (0, DRAW_BLOCK - vocab % DRAW_BLOCK))
    blocks = weights.view(rows, -1, DRAW_BLOCK)  # (B, NB, K)
    block_cdf = blocks.sum(-1).cumsum(-1)  # (B, NB)
    # uniforms drawn on the CPU generator whatever the model's device: the same seed gives the
    # same random numbers on CPU and GPU (common random numbers across checkpoints and methods)
    u = torch.rand(rows, 1, generator=generator).to(weights.device) * block_cdf[:, -1:]  # (B, 1)
    u.clamp_(min=torch.finfo(u.dtype).tiny)  # u = 0 (p = 2^-24) would find token 0 whatever its weight
    block = torch.searchsorted(block_cdf, u).clamp(max=block_cdf.shape[1] - 1)  # (B, 1) first cdf >= u
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)  # (B, 1)
    within = blocks.gather(1, block[:, :, None].expand(-1, -1, DRAW_BLOCK)).squeeze(1).cumsum(-1)  # (B, K)
    # u - before > 0 where before < u; capped at the block's own total, so rounding between the two
    # levels' sums can never land past the block's last token of positive weight
    rest = torch.minimum(u - before, within[:, -1:])
    return (block * DRAW_BLOCK + torch.searchsorted(within, rest)).squeeze(-1)


def left_pad(prompts, pad_token_id):
    """Prompts (lists of ids) -> input_ids, attention_mask, position_ids, each (B, P), left-padded
    so every row's last prompt token sits in the last column."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, length - len(p) :] = torch.tensor(p)
        mask[i, length - len(p) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, mask, position_ids


# positions (rows x (prompt + completion)) per decode batch, at most MAX_DECODE_ROWS rows: bigger
# batches feed the matmuls better (SmolLM2, bf16, 256 prompts: 64 rows 730 new tokens/s, 256 rows 1,100)
DECODE_POSITIONS, MAX_DECODE_ROWS = 16_384, 256


def decode_batch_size(prompts, max_new_tokens):
    """Rows per decode batch: as many as DECODE_POSITIONS allows for the longest prompt, at most
    MAX_DECODE_ROWS (256 IMDb prompts of 8 tokens at once; 25 TL;DR posts of 512)."""
    return max(1, min(MAX_DECODE_ROWS, DECODE_POSITIONS // (max(map(len, prompts)) + max_new_tokens)))


@torch.no_grad()
def sample(model, prompts, max_new_tokens, temperature=1.0, eos_token_id=None, pad_token_id=0,
           generator=None, batch_size=None):
    """Sample one completion per prompt.

    Args:
        prompts: list of prompts, each a non-empty list of token ids.
        max_new_tokens: completion length cap; a completion that hits it has no EOS.
        temperature: 1.0 is pure sampling (the paper's setting for pairs and KL), 0 is greedy.
        eos_token_id: a completion stops after it (the EOS is kept, so it gets scored).
        generator: a torch.Generator, for common random numbers across policies.
        batch_size: prompts decoded together; default `decode_batch_size`.
    Returns:
        list of completions (lists of ids), aligned with `prompts`.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    batch_size = batch_size or decode_batch_size(prompts, max_new_tokens)
    out = []
    with prepacked_linears(model, batch_size), \
         progress.bar(len(prompts), "sampling", enabled=len(prompts) > batch_size, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            out += _sample_batch(model, prompts[start : start + batch_size], max_new_tokens, temperature,
                                 eos_token_id, pad_token_id, generator)
            bar.update(len(prompts[start : start + batch_size]))
    return out


def _sample_batch(model, prompts, max_new_tokens, temperature, eos_token_id, pad_token_id, generator):
    device = next(model.parameters()).device
    with weights_fixed(device):  # under bf16 autocast: each weight cast once, not once per decode step
        return _decode(model, prompts, max_new_tokens, temperature, eos_token_id, pad_token_id, generator, device)


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that holds its keys and values in buffers sized once for prompt + completion
    and writes each step's states into them. The default layer concatenates, copying the whole
    cache at every step and layer: 15% of a bf16 sampling run on SmolLM2. Same values, same views
    of them for attention. (B, H, T, D) states."""

    def __init__(self, capacity):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:2], self.capacity, key_states.shape[-1])
            self._keys, self._values = key_states.new_empty(shape), value_states.new_empty(shape)
            self.length = 0
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache of {self.capacity} positions is full")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def preallocated_cache(model, capacity):
    """A DynamicCache whose layers write into preallocated buffers (`_PreallocatedLayer`); the
    default cache where the model's layers are not all plain ones (sliding windows)."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def _decode(model, prompts, max_new_tokens, temperature, eos_token_id, pad_token_id, generator, device):
    input_ids, mask, position_ids = (x.to(device) for x in left_pad(prompts, pad_token_id))
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                past_key_values=preallocated_cache(model, input_ids.shape[1] + max_new_tokens), **last_only)
    past, logits = out.past_key_values, out.logits[:, -1]  # (B, V)
    next_position = position_ids[:, -1] + 1  # (B,)
    tokens, done = [], torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        token = draw(logits, temperature, generator).masked_fill(done, pad_token_id)  # (B,)
        tokens.append(token)
        if eos_token_id is not None:
            done |= token == eos_token_id
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        next_position = next_position + 1
    ids = torch.stack(tokens, 1).tolist()  # (B, L)
    completions = []
    for row in ids:
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        completions.append(row)
    return completions


def best_of_n(model, prompts, n, score, max_new_tokens, temperature=1.0, eos_token_id=None, pad_token_id=0,
              generator=None):
    """Best-of-N: N samples per prompt, the one `score(prompts, completions)` ranks highest.
    Returns one completion per prompt."""
    repeated = [p for p in prompts for _ in range(n)]
    pool = sample(model, repeated, max_new_tokens, temperature, eos_token_id, pad_token_id, generator)
    if n == 1:
        return pool
    scores = torch.as_tensor(score(repeated, pool)).view(-1, n)  # (prompts, N)
    return [pool[i * n + j] for i, j in enumerate(scores.argmax(-1).tolist())]


def sample_texts(model, tokenizer, prompts, temperature, max_new_tokens, seed, matmuls, n=1, score=None,
                 with_prompt=False):
    """One completion per prompt (ids) at `temperature`, as text without special tokens; Best-of-N for
    n > 1 (`score`'s pick of n); the prompt in front when `with_prompt`. Sampling runs at the `matmuls`
    precision (`precision.autocast`) from a generator seeded `seed`, so every policy and temperature
    meets the same random numbers (the win rates' common random numbers), on the model's device."""
    with autocast(matmuls, next(model.parameters()).device):
        completions = best_of_n(model, prompts, n, score, max_new_tokens, temperature, tokenizer.eos_token_id,
                                tokenizer.pad_token_id, torch.Generator().manual_seed(seed))
    return [tokenizer.decode((p if with_prompt else []) + c, skip_special_tokens=True)
            for p, c in zip(prompts, completions)]
