"""The frozen-bottom cache against the plain full-model forward (the oracle): same logits,
same sequence log-probs, same gradients on the trained top, for GPT-2 and a Llama."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_core import frozen
from dpo_core.data import collate_pairs, make_pair
from dpo_core.logprobs import concatenated_forward, concatenated_inputs, pad_right, position_ids_from_mask
from dpo_core.models import disable_dropout, train_top_layers
from dpo_core.tiny import tiny_gpt2

SEQUENCES = [[5, 9, 33, 2, 7, 7, 1], [40, 41], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [100, 1, 2]]


def tiny_llama(seed=0):
    config = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=256, bos_token_id=256, eos_token_id=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def gpt2():
    return tiny_gpt2(seed=0, n_layer=3)


def padded(sequences):
    rows = [torch.tensor(s) for s in sequences]
    length = max(len(r) for r in rows)
    return pad_right(rows, length, 256), pad_right([torch.ones_like(r) for r in rows], length, 0)


@pytest.mark.parametrize("make_model", [gpt2, tiny_llama])
@pytest.mark.parametrize("n_top", [1, 2, 3])
def test_top_of_cached_bottom_equals_full_forward(make_model, n_top):
    model = make_model()
    input_ids, mask = padded(SEQUENCES)
    full = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    bottom = frozen.bottom_hidden(model, input_ids, mask, n_top)
    cached = frozen.lm_logits(model, frozen.top_hidden(model, bottom, mask, n_top))
    real = mask.bool()
    torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-5)
    assert len(frozen.transformer_blocks(model)) == 3  # blocks restored after the swaps


@pytest.mark.parametrize("make_model", [gpt2, tiny_llama])
def test_cached_rows_unpadded_match_a_batch(make_model):
    model = make_model()
    input_ids, mask = padded(SEQUENCES)
    batch_states = frozen.bottom_hidden(model, input_ids, mask, 2)
    rows = frozen.bottom_states(model, SEQUENCES, 2, pad_token_id=256, batch_size=3)
    assert [r.shape[0] for r in rows] == [len(s) for s in SEQUENCES]
    for row, full_row, length in zip(rows, batch_states, map(len, SEQUENCES)):
        torch.testing.assert_close(row, full_row[:length], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("completion_only", [False, True])
@pytest.mark.parametrize("make_model", [gpt2, tiny_llama])
def test_dpo_forward_and_gradients_match_the_full_model(make_model, completion_only):
    examples = [make_pair([5, 9], [33, 2, 7], [7, 1], 16), make_pair([40], [41, 42, 43, 44], [45], 16)]
    batch = collate_pairs(examples, 256)
    policy, oracle = make_model(), make_model()
    for m in (policy, oracle):
        disable_dropout(m)
        train_top_layers(m, 2)
    inputs = concatenated_inputs(batch)
    sequences = [row[m.bool()].tolist() for row, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    batch["bottom"] = frozen.pad_states(frozen.bottom_states(policy, sequences, 2, 256))
    chosen, rejected = frozen.concatenated_top_forward(policy, batch, 2, completion_only=completion_only)
    chosen_ref, rejected_ref = concatenated_forward(oracle, batch)
    torch.testing.assert_close(chosen, chosen_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rejected, rejected_ref, atol=1e-5, rtol=1e-5)
    (chosen - 2 * rejected).sum().backward()
    (chosen_ref - 2 * rejected_ref).sum().backward()
    trained = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    assert trained
    for (name, p), q in zip(trained, [q for q in oracle.parameters() if q.requires_grad]):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cache_reused_keyed_by_weights_and_tokens_and_rebuilt_when_corrupt(tmp_path, capsys):
    model = tiny_llama()
    first = frozen.cached_states(tmp_path, model, SEQUENCES, 1, 256)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = frozen.cached_states(tmp_path, model, SEQUENCES, 1, 256)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    frozen.cached_states(tmp_path, model, SEQUENCES[:2], 1, 256)  # other tokens: another file
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)  # other frozen weights: another file
    frozen.cached_states(tmp_path, model, SEQUENCES, 1, 256)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    files[0].write_bytes(b"not a safetensors file")
    model = tiny_llama()
    rebuilt = frozen.cached_states(tmp_path, model, SEQUENCES, 1, 256)
    assert "unreadable" in capsys.readouterr().out
    for a, b in zip(first, rebuilt):
        torch.testing.assert_close(a, b)


def test_unsupported_model_and_bad_depth_are_clear_errors():
    model = gpt2()
    input_ids, mask = padded(SEQUENCES)
    with pytest.raises(ValueError, match="n_top must be in 1..3"):
        frozen.bottom_hidden(model, input_ids, mask, 4)
    model.config.model_type = "bloom"
    with pytest.raises(ValueError, match="cache_frozen_bottom"):
        frozen.bottom_hidden(model, input_ids, mask, 1)
