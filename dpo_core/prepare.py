"""`make assets`: prepare the named assets or groups in the asset cache, offline afterwards.

    python -m dpo_core.prepare            the cpu profile's: corpora, SmolLM2, the gold reward (gold.py)
    python -m dpo_core.prepare judge      the local judge's runtime and model, and the other tasks' text
    python -m dpo_core.prepare <name>     one asset (assets.py lists them)

Above `assets` (the resolver) and `gold` (the gold reward's recipe), so that neither needs the other's floor.
"""

import sys
import time

from dpo_core.assets import (CORPORA, JUDGE_MODELS, TEXT_SETS, assets_dir, corpus_path, judge_model_dir,
                             minilm_sentiment_dir, prepare_corpus, prepare_judge_model, prepare_smollm2,
                             prepare_text_set, prepare_xllamacpp, smollm2_dir, text_set_path, xllamacpp_dir)
from dpo_core.gold import prepare_minilm_sentiment

PREPARERS = {
    **{name: (lambda name=name: prepare_corpus(name)) for name in CORPORA},
    "smollm2-135m": prepare_smollm2,
    "minilm-sentiment": prepare_minilm_sentiment,
    "xllamacpp": prepare_xllamacpp,
    "qwen2.5-coder-1.5b": prepare_judge_model,
    **{name: (lambda name=name: prepare_text_set(name)) for name in TEXT_SETS},
}
READY = {
    **{name: (lambda name=name: corpus_path(name).is_file()) for name in CORPORA},
    "smollm2-135m": lambda: (smollm2_dir() / "config.json").is_file(),
    "minilm-sentiment": lambda: (minilm_sentiment_dir() / "config.json").is_file(),
    "xllamacpp": lambda: (xllamacpp_dir() / "xllamacpp").is_dir(),
    "qwen2.5-coder-1.5b": lambda: (judge_model_dir() / JUDGE_MODELS["qwen2.5-coder-1.5b"][0]).is_file(),
    **{name: (lambda name=name: text_set_path(name).is_file()) for name in TEXT_SETS},
}
GROUPS = {  # what `python -m dpo_core.prepare <group>` prepares; no argument: "cpu"
    "cpu": [*CORPORA, "smollm2-135m", "minilm-sentiment"],  # make assets, make figures
    "judge": ["xllamacpp", "qwen2.5-coder-1.5b", *TEXT_SETS],  # make judge-assets: 34 MB + 1.1 GB + 38 MB of text
}


def main(names):
    """Prepare the named assets or groups (the cpu profile's by default); say what was done."""
    names = [n for name in (names or ["cpu"]) for n in GROUPS.get(name, [name])]
    unknown = [n for n in names if n not in PREPARERS]
    if unknown:
        sys.exit(f"unknown asset(s) {unknown}; known: {list(PREPARERS)}, or a group: {list(GROUPS)}")
    print(f"[assets] cache: {assets_dir()}  (move it with DPO_CACHE_DIR)")
    for name in names:
        if READY[name]():
            print(f"[assets] {name}: already prepared, nothing to do")
            continue
        start = time.perf_counter()
        path = PREPARERS[name]()
        print(f"[assets] {name}: prepared in {time.perf_counter() - start:.0f} s -> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
