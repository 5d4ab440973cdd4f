"""What the rest of the package needs to know about a causal LM's layout, in one place.

    block_names(model)         (attribute of the block list, attribute of the final norm)
    transformer_blocks(model)  the ModuleList of blocks (Llama-style `layers`, GPT-2 `h`)
    final_norm(model)          the norm after the last block
    train_top_layers(model, k) freeze all but the top k blocks and the final norm (0: train all)
    disable_dropout(model)     dropout off everywhere (pi = pi_ref at step 0)
    trainable(model)           the parameters an optimizer should get
    attention_in_fp32(model)   attention in fp32 on CPU under bf16 autocast, up to 96 positions
                               (every loader sets it)
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


def block_names(model):
    """(attribute of the block list, attribute of the final norm) on the base model."""
    return ("h", "ln_f") if model.config.model_type == "gpt2" else ("layers", "norm")


def transformer_blocks(model):
    """The ModuleList of transformer blocks of a causal LM (Llama-style `layers`, GPT-2 `h`)."""
    blocks = getattr(model.base_model, block_names(model)[0], None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
    return blocks


def final_norm(model):
    return getattr(model.base_model, block_names(model)[1])


def train_top_layers(model, n_layers):
    """Freeze everything but the top `n_layers` blocks and the final norm (n_layers=0: train all).

    A CPU lever for quick exploration, not the replication: the paper trains the whole model, and
    a top-4 SmolLM2 reaches less reward at a given KL (README). The (tied) embedding and LM head
    stay frozen, so the optimizer touches about a tenth of SmolLM2's weights. Returns the number
    of trainable parameters.
    """
    if n_layers > 0:
        model.requires_grad_(False)
        transformer_blocks(model)[-n_layers:].requires_grad_(True)
        final_norm(model).requires_grad_(True)
    else:
        model.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def disable_dropout(model):
    """Dropout off in every module: with it on, pi != pi_ref at step 0 and the reference
    log-probs are noise (the official code and TRL do the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def trainable(model):
    """The parameters that require grad (after `train_top_layers`): what the optimizer gets."""
    return [p for p in model.parameters() if p.requires_grad]


FP32_ATTENTION = "dpo_core_sdpa_fp32"
# the longest key length attention runs in fp32 at (bench_levers.py, fp32-attention-bf16, a bf16 DPO
# step on an AMX Xeon: 1.26x at 40 positions, 1.14x at 56, 1.03x at 88, 0.96x at 128)
FP32_ATTENTION_MAX_POSITIONS = 96


def fp32_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with autocast off and its inputs in fp32, on CPU, for keys of up
    to FP32_ATTENTION_MAX_POSITIONS positions. Under bf16 autocast the linear layers still run in
    bf16; only attention's own products and softmax go back to fp32. Why: on CPU, PyTorch's bf16
    flash-attention backward is slow at this project's short sequences (10 ms a layer at 40 tokens,
    a fifth of a bf16 DPO step on an AMX Xeon), and fp32 attention there costs little: the bf16 step
    ran 1.26x faster and decoding 1.1x (bench/README.md), no further from fp32's log-probs. Longer
    keys (SFT's 128-token chunks, TL;DR posts) take stock SDPA, bf16 under autocast: there fp32
    attention was slower. The limit is on the batch's padded key length, so while decoding a batch
    switches to SDPA once its keys pass it (IMDb's 8 + 32 tokens never do). In fp32 runs it is
    exactly SDPA (the casts are no-ops). On GPU it passes through: there bf16 flash attention is the
    fast path."""
    if query.device.type != "cpu" or key.shape[2] > FP32_ATTENTION_MAX_POSITIONS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def attention_in_fp32(model):
    """Switch a transformers model that runs SDPA attention to `fp32_attention`; any other is left
    as it is. Only the running model changes: a saved config still says SDPA."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return model
    if FP32_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(FP32_ATTENTION, fp32_attention)
        AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)  # the same masks as SDPA
    model.set_attn_implementation(FP32_ATTENTION)
    return model
