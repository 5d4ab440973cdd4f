"""Text pairs tokenize exactly like their text (`data.split_prompt`, `data.encode_pair`), with
three tokenizers built in memory: the byte tokenizer, a GPT-2-style byte BPE and a Llama-style
SentencePiece BPE (Metaspace "▁" prepended at the text's start, BOS added by the tokenizer)."""

import warnings

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from dpo_core.data import encode_pair, encode_prompt, split_prompt
from dpo_core.tiny import byte_tokenizer

CORPUS = [
    "I think this movie deserves an award.", "The movie wasn't good, it was bad.", "This film is a gem.",
    "a dull , lifeless mess of a film .", "The acting was superb and the movies of this director are great.",
] * 40


def gpt2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def llama_style():
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


TOKENIZERS = {"byte": byte_tokenizer, "gpt2-bpe": gpt2_style, "llama-sentencepiece": llama_style}
PROMPTS = ["I think this movie", "I think this movie "]  # without and with a trailing space
COMPLETIONS = [" deserves an award.", "deserves an award.", "s deserve an award.", "n't good"]  # with and without one


def encoded(tok, prompt, chosen, rejected=" is bad.", **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        example = encode_pair(tok, prompt, chosen, rejected, max_length=64, **kwargs)
    return example, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("completion", COMPLETIONS)
def test_ids_decode_to_exactly_prompt_plus_completion(name, prompt, completion):
    tok = TOKENIZERS[name]()
    example, _ = encoded(tok, prompt, completion)
    for side, text in (("chosen", completion), ("rejected", " is bad.")):
        ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
        n_prompt = labels.count(-100)
        assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]  # the prompt, and only it, masked
        assert ids[-1] == tok.eos_token_id == labels[-1]  # EOS by default, and scored
        assert tok.decode(ids[:-1], skip_special_tokens=True) == prompt + text
    n_chosen, n_rejected = example["chosen_labels"].count(-100), example["rejected_labels"].count(-100)
    assert n_chosen == n_rejected and example["chosen_input_ids"][:n_chosen] == example["rejected_input_ids"][:n_chosen]


def test_the_old_separate_tokenization_was_wrong_for_sentencepiece():
    """What the split fixes: tokenizing the completion alone prepends "▁", a spurious space."""
    tok = llama_style()
    separate = tok("I think this movie ", add_special_tokens=False)["input_ids"] + \
        tok("deserves an award.", add_special_tokens=False)["input_ids"]
    assert tok.decode(separate) == "I think this movie  deserves an award."
    example, _ = encoded(tok, "I think this movie ", "deserves an award.")
    assert tok.decode(example["chosen_input_ids"], skip_special_tokens=True) == "I think this movie deserves an award."


def test_bos_starts_the_prompt_where_the_tokenizer_adds_one():
    tok = llama_style()
    example, _ = encoded(tok, "This film", " is a gem.")
    assert example["chosen_input_ids"][0] == tok.bos_token_id == encode_prompt(tok, "This film")[0]
    assert encode_prompt(tok, "This film") == example["chosen_input_ids"][: example["chosen_labels"].count(-100)]
    for name in ("byte", "gpt2-bpe"):  # no BOS where the tokenizer adds none
        tok = TOKENIZERS[name]()
        assert encode_prompt(tok, "This film") == tok("This film", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["gpt2-bpe", "llama-sentencepiece"])
def test_a_token_straddling_the_boundary_goes_to_the_completion_with_a_warning(name):
    tok = TOKENIZERS[name]()
    prompt_ids, (completion_ids,), straddled = split_prompt(tok, "I think this movie", ["s deserve an award."])
    assert straddled  # "movie" + "s" merges into one token "movies"
    assert "movies" in tok.decode(completion_ids)
    assert tok.decode(prompt_ids, skip_special_tokens=True) == "I think this"
    _, caught = encoded(tok, "I think this movie", "s deserve an award.")
    assert any("straddles" in m for m in caught)
    _, clean = encoded(tok, "I think this movie", " deserves an award.")
    assert not clean


def test_append_eos_false_for_truncated_text():
    tok = gpt2_style()
    example, _ = encoded(tok, "This film", " is a gem", append_eos=False)
    assert example["chosen_input_ids"][-1] != tok.eos_token_id
    assert tok.decode(example["chosen_input_ids"]) == "This film is a gem"
