"""A tiny random-init GPT-2 and a byte-level tokenizer, built in memory with no network.

They serve the unit tests and the `smoke` profile: a forward/backward pass takes
milliseconds, and nothing is downloaded or read from disk. GPT-2 is chosen on purpose:
its absolute position embeddings make position-id mistakes visible, as with gpt2-large
in the paper. `tiny_judge_gguf` writes a 0.1 MB llama GGUF for the local judge's tests.
"""

import gguf
import numpy as np
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


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_judge_gguf(path, letter="A", n_embd=32, n_ff=64, n_head=2):
    """Write a one-block llama GGUF that llama.cpp loads in milliseconds and that answers `letter`
    after any text: the local judge end to end (`judges.LocalJudge`) without a 1 GB model.

    Every token embeds to the same vector and every block's weights are zero, so the last hidden
    state is the same at every position; the output row of `letter` is the only non-zero one, so
    its log-prob is 0 and every other token's about -32. Byte-level BPE vocabulary (GPT-2's
    byte-to-unicode map, one merge, as llama.cpp requires one) plus ChatML's two control tokens.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    byte_symbols = [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]
    tokens = [*byte_symbols, "<|im_start|>", "<|im_end|>", "\u0120t"]
    types = [1] * 256 + [3, 3, 1]  # normal, control
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(0)  # all fp32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["\u0120 t"])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    output = np.zeros((vocab, n_embd), np.float32)  # (V, E)
    output[ord(letter)] = 1.0
    writer.add_tensor("token_embd.weight", np.ones((vocab, n_embd), np.float32))  # (V, E)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    for name, shape in [("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, n_embd)), ("attn_v", (n_embd, n_embd)),
                        ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)),
                        ("ffn_down", (n_embd, n_ff))]:
        writer.add_tensor(f"blk.0.{name}.weight", np.zeros(shape, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
