"""Sequence log-probabilities of completions under a causal LM.

The DPO loss (Eq. 7) needs log pi(y|x) = sum_t log pi(y_t | x, y_<t) over the completion
tokens only. This module computes it from logits, and runs chosen and rejected
completions through a model in one forward pass.

Conventions (the official code's and TRL's):
- `labels` equal `input_ids` with prompt and padding positions set to `ignore_index`;
  masking is by label, never by token id (pad == eos in GPT-2 would drop the real EOS).
- Logits at position t predict token t + 1; the shift happens inside.
- The log-softmax is taken in fp32 whatever the logits' dtype.
- Batches are right-padded and carry explicit position ids, so models with absolute
  position embeddings (GPT-2) see each real token at its true position.
"""

import torch


def token_logps(logits, labels, ignore_index=-100):
    """Per-token log p(label_t | prefix) for the unshifted `labels`.

    Args:
        logits: (B, T, V) from a causal LM over `input_ids`.
        labels: (B, T) `input_ids` with ignored positions set to `ignore_index`.
    Returns:
        logps (B, T-1) fp32, zero where masked, and mask (B, T-1) bool.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    # position t predicts token t + 1: shift the labels, not the logits (a (B, T-1, V) slice would be
    # copied in the forward and zero-padded back in the backward); the last position scores nothing
    labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], ignore_index)], dim=1)  # (B, T)
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)
    logps = _LabelLogSoftmax.apply(logits.flatten(0, 1), safe_labels.flatten()).view(labels.shape)  # (B, T)
    return (logps * mask)[:, :-1], mask[:, :-1]


class _LabelLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[label] per row in fp32 (or fp64), as gather - logsumexp, with the backward
    written out: d logp / d logits = onehot(label) - softmax, formed in one buffer in place. Autograd
    of gather - logsumexp takes about twice the passes over the (N, V) logits (a zero-filled
    gather gradient, logsumexp's own, their sum); at V = 49,152 those passes were a quarter of a
    bf16 training step. (N, V), (N,) -> (N,)."""

    @staticmethod
    def forward(ctx, logits, labels):
        x = logits.to(_logp_dtype(logits))  # (N, V); no copy when already fp32
        lse = torch.logsumexp(x, dim=-1)  # (N,)
        ctx.save_for_backward(x, lse, labels)
        ctx.logits_dtype = logits.dtype
        return x.gather(-1, labels[:, None]).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, grad_logps):  # (N,)
        x, lse, labels = ctx.saved_tensors
        grad = _onehot_minus_softmax_(torch.sub(x, lse[:, None]), labels, grad_logps[:, None].to(x.dtype))
        return grad.to(ctx.logits_dtype), None


def _onehot_minus_softmax_(shifted, labels, g):
    """d logp(label) / d logits scaled by g, g * (onehot(label) - softmax), formed in place in
    `shifted` = logits - logsumexp: (N, V), (N,), (N, 1) -> (N, V). Both autograd functions here
    use it."""
    return shifted.exp_().mul_(-g).scatter_add_(-1, labels[:, None], g)


def sequence_logps(logits, labels, ignore_index=-100, average=False):
    """Sum (or, with average=True, mean) of log p(label_t | prefix) over unmasked positions.

    This is log pi(y|x) of the paper when `labels` mask the prompt. DPO as published
    sums; averaging changes the effective beta by about the completion length.

    Args:
        logits: (B, T, V) from a causal LM over `input_ids`, any float dtype.
        labels: (B, T) `input_ids` with prompt and padding positions set to `ignore_index`.
    Returns:
        (B,) fp32.
    Raises:
        ValueError if a sequence has no unmasked label (an empty completion), which would
        otherwise score as log-prob 0 (sum) or 0/0 (mean).
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    counts = mask.sum(-1)  # (B,)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"sequences {empty} have no completion tokens (every label is {ignore_index}); "
            "drop empty completions before scoring them"
        )
    total = logps.sum(-1)
    return total / counts if average else total


class _ChunkedLabelLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T + bias)[label] per row, a chunk of rows at a time.

    Neither pass holds more than one (chunk, V) block of logits. Two ways to get the gradient:
    - the head is trained: the forward keeps only the per-row logsumexp, and the backward
      recomputes each chunk's logits (one extra LM-head matmul) to form
      d logp / d logits = onehot(label) - softmax;
    - the head is frozen (top-layer training, a tied frozen embedding): d logp / d hidden =
      (onehot(label) - softmax) @ weight is formed in the forward, (N, H), and the backward only
      scales it by the incoming gradient, so no matmul is repeated.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, grad_in_forward):  # (N, H), (V, H), (V,), (N,)
        logps = hidden.new_empty(len(labels), dtype=_logp_dtype(hidden))  # (N,)
        lse = torch.empty_like(logps)  # (N,)
        dlogp_dhidden = torch.empty_like(hidden) if grad_in_forward else None  # (N, H)
        weight_h = weight.to(hidden.dtype)  # cast once (bf16 under autocast), not per chunk
        for start in range(0, len(labels), chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = _chunk_logits(hidden[rows], weight_h, bias)  # (C, V) fp32
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(-1, labels[rows, None]).squeeze(-1) - lse[rows]
            if grad_in_forward:  # onehot - softmax, in place, then through the head
                onehot_minus_softmax = _onehot_minus_softmax_(logits.sub_(lse[rows, None]), labels[rows],
                                                              torch.ones_like(logps[rows, None]))
                dlogp_dhidden[rows] = onehot_minus_softmax.to(hidden.dtype) @ weight_h
        ctx.chunk_rows, ctx.grad_in_forward = chunk_rows, grad_in_forward
        # the backward's matmuls run in the forward's precision (autograd runs them outside autocast)
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
        ctx.save_for_backward(*((dlogp_dhidden,) if grad_in_forward else (hidden, weight, bias, labels, lse)))
        return logps

    @staticmethod
    def backward(ctx, grad_logps):  # (N,)
        if ctx.autocast is None:
            return _ChunkedLabelLogps._backward(ctx, grad_logps)
        device, dtype = ctx.autocast
        with torch.autocast(device_type=device, dtype=dtype):
            return _ChunkedLabelLogps._backward(ctx, grad_logps)

    @staticmethod
    def _backward(ctx, grad_logps):
        if ctx.grad_in_forward:
            (dlogp_dhidden,) = ctx.saved_tensors
            return grad_logps[:, None].to(dlogp_dhidden.dtype) * dlogp_dhidden, None, None, None, None, None
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=lse.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        weight_h = weight.to(hidden.dtype)
        for start in range(0, len(labels), ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            g = grad_logps[rows, None].to(lse.dtype)  # (C, 1)
            shifted = _chunk_logits(hidden[rows], weight_h, bias).sub_(lse[rows, None])  # (C, V)
            grad_logits = _onehot_minus_softmax_(shifted, labels[rows], g)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits.to(hidden.dtype) @ weight_h  # (C, H)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ hidden[rows].to(lse.dtype)  # (V, H); out of place, so autocast applies
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _logp_dtype(hidden):
    """fp32 for fp16/bf16/fp32 hidden states (the log-softmax is always taken in fp32), fp64 for fp64."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _chunk_logits(hidden, weight, bias):
    """(C, H) -> (C, V) logits in fp32; the matmul runs in the hidden states' dtype (bf16 under autocast)."""
    logits = hidden @ weight.T  # weight already in hidden's dtype
    if bias is not None:
        logits = logits + bias.to(hidden.dtype)
    return logits.to(_logp_dtype(hidden))


def label_logps(hidden, lm_head, labels, chunk_rows=None):
    """log p(label | hidden) under a linear LM head, per row: (N, H) -> (N,) fp32, without ever
    holding the (N, V) logits of all rows (`_ChunkedLabelLogps`). The oracle is
    `log_softmax(lm_head(hidden)).gather(labels)` (tests/test_logprobs.py).

    Args:
        hidden: (N, H) final hidden states (after the final norm), one row per scored position.
        lm_head: an nn.Linear (H -> V), the model's output layer; a tied embedding is fine.
        labels: (N,) the token each row scores.
        chunk_rows: rows per block; default: a (chunk, V) fp32 block of about 64 MB.
    """
    weight, bias = lm_head.weight, lm_head.bias
    chunk_rows = chunk_rows or max(1, (64 << 20) // (4 * weight.shape[0]))
    head_frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    grad_in_forward = torch.is_grad_enabled() and hidden.requires_grad and head_frozen
    return _ChunkedLabelLogps.apply(hidden, weight, bias, labels, chunk_rows, grad_in_forward)


def scored_logps(hidden, lm_head, labels, ignore_index=-100, average=False, chunk_rows=None):
    """`sequence_logps` with the LM head applied only where a label is scored.

    The full path turns every position into V logits, prompt and padding included; here only
    the N completion positions are, and in blocks (`label_logps`), so neither the forward nor
    the backward holds a (B, T, V) or even an (N, V) tensor. That saves LM-head FLOPs when
    prompts or padding are long and memory whatever they are (SmolLM2's V is 49,152).
    The oracle is `sequence_logps(lm_head(hidden), labels)` (tests/test_logprobs.py).

    Args:
        hidden: (B, T, H) final hidden states (after the final norm) over `input_ids`.
        lm_head: the model's output layer, an nn.Linear (H -> V).
        labels: (B, T) `input_ids` with prompt and padding positions set to `ignore_index`.
        chunk_rows: see `label_logps`.
    Returns:
        (B,) fp32 sums (means with average=True) of log p(label_t | prefix).
    """
    labels = labels[:, 1:]  # position t predicts token t + 1
    mask = labels != ignore_index  # (B, T-1)
    counts = mask.sum(-1)  # (B,)
    if (counts == 0).any():
        raise ValueError(f"sequences {(counts == 0).nonzero().flatten().tolist()} have no completion tokens "
                         f"(every label is {ignore_index}); drop empty completions before scoring them")
    rows = mask.nonzero(as_tuple=True)[0]  # (N,) the row of each scored position
    picked = label_logps(hidden[:, :-1][mask], lm_head, labels[mask], chunk_rows)  # (N,)
    total = torch.zeros(len(labels), dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return total / counts if average else total


def position_ids_from_mask(attention_mask):
    """(B, T) position ids that count only real tokens: cumsum(mask) - 1, 0 on padding.
    Needed by absolute-position models (GPT-2) whenever a row does not start at column 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_right(rows, length, value):
    """Stack 1-D tensors into (len(rows), length), right-padded with `value`."""
    out = rows[0].new_full((len(rows), length), value)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


def concatenated_inputs(batch, pad_token_id=0, ignore_index=-100):
    """Stack the chosen and rejected halves of a preference batch into one batch.

    Args:
        batch: dict with `chosen_input_ids`, `chosen_attention_mask`, `chosen_labels` and the
            same three `rejected_*` keys, each (B, T_c) or (B, T_r).
    Returns:
        dict of `input_ids`, `attention_mask`, `labels`, each (2B, max(T_c, T_r));
        rows [:B] are chosen, rows [B:] rejected.
    """
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": ignore_index}
    out = {}
    for key, value in pad_values.items():
        rows = list(batch[f"chosen_{key}"]) + list(batch[f"rejected_{key}"])
        out[key] = pad_right(rows, length, value)
    return out


def concatenated_forward(model, batch, average=False, completion_only=False):
    """Run chosen and rejected completions through `model` in one forward pass.

    One pass instead of two halves the kernel launches and, under FSDP, the all-gathers.
    Returns (chosen_logps, rejected_logps), each (B,) fp32 summed log-probs (means if
    average=True). completion_only: see `forward_logps`.
    """
    inputs = concatenated_inputs(batch)
    logps = forward_logps(model, **inputs, average=average, completion_only=completion_only)  # (2B,)
    n_pairs = batch["chosen_input_ids"].shape[0]
    return logps[:n_pairs], logps[n_pairs:]


# config fields of transformers models whose logits are more than the output layer on the final
# hidden states (Gemma 2/3 softcapping, Cohere's scale, Granite's divisor, Falcon-H1's multiplier)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


def check_plain_output_layer(model):
    """Refuse a model whose logits are not `model.get_output_embeddings()` applied to
    `model.base_model(...).last_hidden_state`: the completion-only paths (here and in
    `evaluate.sequence_kl`) apply the output layer themselves and would score such a model wrong,
    silently."""
    config = getattr(model, "config", None)
    found = {name: getattr(config, name, None) for name in LOGIT_TRANSFORMS}
    found = {name: value for name, value in found.items() if value not in (None, 1, 1.0)}
    if found or model.get_output_embeddings() is None:
        what = found or "it has no output layer"
        raise ValueError(f"{type(model).__name__}'s logits are not its output layer on its final hidden states "
                         f"({what}); score it through its full forward (completion_only=False)")


def forward_logps(model, input_ids, attention_mask, labels, average=False, completion_only=False):
    """Sequence log-probs of one right-padded batch (B, T) -> (B,), with explicit position ids.
    completion_only: run the LM head on scored positions only (`scored_logps`); needs a model
    whose logits are exactly its output layer on the final hidden states (Llama family, GPT-2),
    and calls the base model directly, so not through a DDP wrapper."""
    if completion_only:
        check_plain_output_layer(model)
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return scored_logps(hidden, model.get_output_embeddings(), labels, average=average)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).logits
    return sequence_logps(logits, labels, average=average)


class SequenceScorer(torch.nn.Module):
    """A causal LM as a module whose forward is (input_ids, attention_mask, labels) -> (B,)
    sequence log-probs (`forward_logps`).

    What to hand to DDP (`accelerator.prepare`) with completion_only=True: that path calls the
    LM's base model and output layer directly, bypassing the LM's own forward, so a DDP wrapper
    around the LM would never see the forward and would not average the gradients. Wrapped
    around this module it does (tests/test_distributed.py). Use with `concatenated_scores`.
    """

    def __init__(self, model, completion_only=True, average=False):
        super().__init__()
        self.model, self.completion_only, self.average = model, completion_only, average

    def forward(self, input_ids, attention_mask, labels):
        return forward_logps(self.model, input_ids, attention_mask, labels, self.average, self.completion_only)


def concatenated_scores(scorer, batch):
    """`concatenated_forward` through a `SequenceScorer` (or a DDP wrapper of one): the
    `forward` argument of `train.dpo_step` when the policy passed to it is the scorer."""
    logps = scorer(**concatenated_inputs(batch))  # (2B,)
    n_pairs = batch["chosen_input_ids"].shape[0]
    return logps[:n_pairs], logps[n_pairs:]
