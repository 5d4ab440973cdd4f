"""Train the top of a model on cached hidden states of its frozen bottom (a CPU lever).

With `models.train_top_layers(model, k)`, the embeddings and blocks 0..L-k-1 never change, so
the hidden state entering block L-k is a fixed function of the tokens. Compute it once per
sequence (`bottom_hidden`), and every later forward runs only the top k blocks, the final
norm and the LM head (`top_hidden`): the same logits as the full model (tested to 1e-5), at
k/L of the block cost. The policy and pi_ref share the frozen bottom, so pi_ref's pass on the
same tokens costs only its top too (PPO).

    bottom_hidden(model, ids, mask, k)     (B, T) -> (B, T, H), the input of block L-k
    top_hidden(model, bottom, mask, k)     (B, T, H) -> (B, T, H), after the final norm
    final_hidden(...)                      either path; the LM head and value head read it
    bottom_states / pad_states             per-sequence cache rows and their batching
    cached_states                          the cache on disk, keyed by a content hash

Supported: Llama-family models (SmolLM2, Mistral, Qwen2) and GPT-2, whose blocks take the
embedding output unchanged through `inputs_embeds`.
"""

import contextlib
import functools
from pathlib import Path

import torch

from dpo_core import results
from dpo_core.logprobs import (
    concatenated_forward,
    concatenated_inputs,
    pad_right,
    position_ids_from_mask,
    scored_logps,
    sequence_logps,
)
from dpo_core.models import block_names, final_norm, transformer_blocks
from dpo_core.precision import autocast_state

LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3"}


def supports(model):
    return model.config.model_type in LLAMA_LIKE | {"gpt2"}


def _require_supported(model, n_top):
    if not supports(model):
        raise ValueError(f"frozen-bottom caching supports Llama-family and GPT-2 models, not "
                         f"{model.config.model_type!r}; set cache_frozen_bottom to False")
    n_blocks = len(transformer_blocks(model))
    if not 0 < n_top <= n_blocks:
        raise ValueError(f"n_top must be in 1..{n_blocks} (the model's blocks), got {n_top}")


@contextlib.contextmanager
def _swapped(module, **replacements):
    """Temporarily replace submodules of `module` (restored even on error)."""
    originals = {name: getattr(module, name) for name in replacements}
    try:
        for name, replacement in replacements.items():
            setattr(module, name, replacement)
        yield module
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


class _NoPositions(torch.nn.Module):
    """GPT-2 adds position embeddings to `inputs_embeds`; the bottom's hidden state has them already."""

    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, position_ids):
        return torch.zeros(*position_ids.shape, self.width)


@torch.no_grad()
def bottom_hidden(model, input_ids, attention_mask, n_top):
    """(B, T) right-padded tokens -> (B, T, H) hidden states entering block L - n_top, no graph."""
    _require_supported(model, n_top)
    blocks, norm = block_names(model)
    base = model.base_model
    with _swapped(base, **{blocks: transformer_blocks(model)[:-n_top], norm: torch.nn.Identity()}):
        return base(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask)).last_hidden_state


def top_hidden(model, bottom, attention_mask, n_top):
    """(B, T, H) from `bottom_hidden` -> (B, T, H) final-norm hidden states, as the full model's."""
    _require_supported(model, n_top)
    blocks, _ = block_names(model)
    base = model.base_model
    replacements = {blocks: transformer_blocks(model)[-n_top:]}
    if model.config.model_type == "gpt2":
        replacements.update(wpe=_NoPositions(bottom.shape[-1]), drop=torch.nn.Identity())
    with _swapped(base, **replacements):
        return base(inputs_embeds=bottom, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask)).last_hidden_state


def final_hidden(model, input_ids, attention_mask, bottom=None, n_top=0):
    """(B, T, H) final-norm hidden states: from cached `bottom` states through the top n_top
    blocks, or (bottom=None) through the whole model. The LM head turns them into logits."""
    if bottom is not None:
        return top_hidden(model, bottom, attention_mask, n_top)
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask)).last_hidden_state


def lm_logits(model, hidden):
    """(B, T, H) -> (B, T, V) with the model's own LM head."""
    return model.get_output_embeddings()(hidden)


def concatenated_top_forward(model, batch, n_top, average=False, completion_only=False):
    """`logprobs.concatenated_forward` on cached bottom states: batch["bottom"] is (2B, T, H),
    chosen rows then rejected rows, in the layout of `concatenated_inputs`.
    Returns (chosen_logps, rejected_logps), each (B,).

    completion_only: the LM head on scored positions only, 16% faster per step in the cpu
    profile (bench/LEVERS.md) but equal to the full path only to about 1e-5, not bit for bit:
    pi_ref's log-probs (computed with full logits in notebook 03) would then differ from pi's at
    step 0 by rounding, and the tie count of step 0 would read noise. Off by default."""
    inputs = concatenated_inputs(batch)
    hidden = top_hidden(model, batch["bottom"], inputs["attention_mask"], n_top)
    if completion_only:  # the LM head only where a completion token is scored (`logprobs.scored_logps`)
        logps = scored_logps(hidden, model.get_output_embeddings(), inputs["labels"], average=average)  # (2B,)
    else:
        logps = sequence_logps(lm_logits(model, hidden), inputs["labels"], average=average)  # (2B,)
    n_pairs = batch["chosen_input_ids"].shape[0]
    return logps[:n_pairs], logps[n_pairs:]


def bottom_states(model, sequences, n_top, pad_token_id, batch_size=32):
    """Bottom hidden states of each token-id list, unpadded: a list of (T_i, H) tensors."""
    states = []
    for start in range(0, len(sequences), batch_size):
        rows = [torch.tensor(s) for s in sequences[start : start + batch_size]]
        length = max(len(r) for r in rows)
        mask = pad_right([torch.ones_like(r) for r in rows], length, 0)
        hidden = bottom_hidden(model, pad_right(rows, length, pad_token_id), mask, n_top)
        states += [h[: len(r)] for h, r in zip(hidden, rows)]
    return states


def pad_states(rows):
    """(T_i, H) rows -> (B, max T_i, H), zeros after each row (masked positions)."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def fingerprint(model, n_top, sequences):
    """sha256 of everything the bottom states depend on: architecture, the frozen weights
    (embeddings and the bottom blocks), the token ids and the precision the bottom runs in."""
    top = {id(p) for block in transformer_blocks(model)[-n_top:] for p in block.parameters()}
    skip = top | {id(p) for p in final_norm(model).parameters()}  # trained, so not part of the key
    frozen_weights = [[name, p] for name, p in model.base_model.named_parameters() if id(p) not in skip]
    return results.fingerprint(model.config.model_type, len(transformer_blocks(model)), n_top, frozen_weights,
                               [list(s) for s in sequences], autocast_state())


def cached_states(cache_dir, model, sequences, n_top, pad_token_id, batch_size=32):
    """`bottom_states`, loaded from `cache_dir/<fingerprint>.safetensors` when a run with the
    same frozen weights and tokens made them already (`results.cached_tensors`: written to a
    temporary name, then renamed; an unreadable file is recomputed)."""
    def compute():
        states = bottom_states(model, sequences, n_top, pad_token_id, batch_size)
        return {"states": torch.cat(states).contiguous(), "lengths": torch.tensor([len(s) for s in states])}

    path = Path(cache_dir) / f"bottom-{fingerprint(model, n_top, sequences)[:24]}.safetensors"
    stored = results.cached_tensors(path, compute, "frozen", valid=lambda t: int(t["lengths"].sum()) == len(t["states"]))
    return list(stored["states"].split(stored["lengths"].tolist()))


def prepare(cache_dir, model, examples, n_top, pad_token_id):
    """(forward, bottom_states) for training the top `n_top` blocks of `model` on `make_pair`
    examples: the frozen bottom's states of every chosen and rejected sequence, cached by content
    (`cached_states`), and the forward that runs only the top on them. n_top = 0 (the whole model
    trains): the plain `concatenated_forward` and no states."""
    if n_top == 0:
        return concatenated_forward, None
    sequences = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
    states = cached_states(cache_dir, model, sequences, n_top, pad_token_id)
    return functools.partial(concatenated_top_forward, n_top=n_top), states
