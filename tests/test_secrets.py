"""No secret is ever written (issue 7, item 5): run the TL;DR notebook on smoke with the chat
judge against a loopback stub endpoint and a planted API key, then search every file the run
wrote (the executed notebook, the run directory, the judge's reply cache, the figures) for it."""

import secrets
from pathlib import Path

import papermill as pm
import yaml
from test_judges import Stub

ROOT = Path(__file__).resolve().parents[1]


def test_a_planted_key_is_used_but_written_nowhere(tmp_path, monkeypatch):
    key = "sk-planted-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)  # the kernel inherits this environment
    stub = Stub(answer="A")
    try:
        params = yaml.safe_load((ROOT / "params" / "smoke" / "11_tldr_dpo.yaml").read_text())
        params.update(results_root=str(tmp_path / "results"), fig_dir=str(tmp_path / "figures"),
                      judge="chat:stub-judge", judge_url=stub.url)
        executed = tmp_path / "executed.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / "11_tldr_dpo.ipynb"), str(executed), parameters=params,
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False, execution_timeout=600)
    finally:
        stub.close()
    # the key did reach the endpoint, so the search below could have found it
    assert stub.requests and all(r["auth"] == f"Bearer {key}" for r in stub.requests)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "judge" for p in written) and (tmp_path / "figures" / "winrate_temperature_tldr.png").exists()
    leaked = [str(p) for p in written if key.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
