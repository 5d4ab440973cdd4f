"""A tiny random-init GPT-2 and a byte-level tokenizer, built in memory with no network.

They serve the unit tests and the `smoke` profile: a forward/backward pass takes
milliseconds, and nothing is downloaded or read from disk. GPT-2 is chosen on purpose:
its absolute position embeddings make position-id mistakes visible, as with gpt2-large
in the paper.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def byte_tokenizer():
    """Byte-level tokenizer: one token per UTF-8 byte plus EOS (id 256), which is also pad.

    Every string round-trips, and prompt and completion never merge across their boundary.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins for the bytes
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def tiny_gpt2(seed=0, n_layer=2, n_embd=32, n_head=2, n_positions=256):
    """A random-init GPT-2 over the byte vocabulary (about 60k parameters), dropout off.

    The same seed gives the same weights; the global RNG is left untouched.
    """
    config = GPT2Config(
        vocab_size=257,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.eval()
