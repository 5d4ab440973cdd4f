"""What the rest of the package needs to know about a causal LM's layout, in one place.

    block_names(model)         (attribute of the block list, attribute of the final norm)
    transformer_blocks(model)  the ModuleList of blocks (Llama-style `layers`, GPT-2 `h`)
    final_norm(model)          the norm after the last block
    train_top_layers(model, k) freeze all but the top k blocks and the final norm (0: train all)
    disable_dropout(model)     dropout off everywhere (pi = pi_ref at step 0)
    trainable(model)           the parameters an optimizer should get
"""

import torch


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
