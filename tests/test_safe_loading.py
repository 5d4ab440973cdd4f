"""Safe loading (issue 7 item 5), checked on the source: weights only through safetensors or
`torch.load(..., weights_only=True)`, `trust_remote_code` never switched on, no pickle."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("dpo_core", "bench", "notebooks") for p in (ROOT / folder).rglob("*")
           if p.suffix in (".py", ".ipynb")]


def test_there_is_source_to_check():
    assert len(SOURCES) > 10


def test_torch_load_only_with_weights_only():
    for path in SOURCES:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.relative_to(ROOT)}: {call}"


def test_no_remote_code_and_no_pickle():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path.relative_to(ROOT)
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(", text, flags=re.MULTILINE), path.relative_to(ROOT)
