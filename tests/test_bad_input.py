"""Bad input stops with one line that names the fix, and leaves nothing half-written (issue 7,
item 4). Where each case is tested:

    unknown or misspelt notebook parameter   here; test_notebook_params.py; test_notebooks.py
    wrong type                               here; test_notebook_params.py
    beta <= 0                                here (notebook); test_losses.py (dpo_loss)
    empty prompt or completion               here (sampler, KL batch); test_data.py (pairs)
    prompt longer than max_length            test_data.py
    chosen equal to rejected                 test_data.py
    dataset missing a column                 here
    asset missing while offline              test_assets.py
    corrupt cache file                       test_assets.py (packages, by hash), test_frozen.py
                                             (hidden states), test_resume.py (checkpoints),
                                             test_judges.py (judge replies)
    NaN loss                                 test_train.py (weights unchanged), test_resume.py
                                             (the step and the last good checkpoint)
    judge API key missing                    test_judges.py
"""

from pathlib import Path

import pandas as pd
import pytest

from dpo_core import assets
from dpo_core.evaluate import completion_batch
from dpo_core.launch import run
from dpo_core.notebook import ParameterError
from dpo_core.sampling import sample
from dpo_core.tiny import tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]
DPO_NOTEBOOK = ROOT / "notebooks" / "04_imdb_dpo_and_baselines.ipynb"


@pytest.mark.parametrize("overrides, message", [
    ({"seting": 0.2}, "unknown parameter 'seting' (did you mean 'setting'?)"),
    ({"n_steps": 2.5}, "parameter 'n_steps' must be int, got float 2.5"),
    ({"setting": 0.0}, "dpo's beta must be > 0, got 0.0"),
    ({"method": "ipo", "setting": -1}, "ipo's beta must be > 0, got -1.0"),
    ({"method": "ppo"}, "ppo is not an offline method; those are ['dpo', 'ipo', 'hinge', 'unlikelihood', 'preferred_ft']"),
    ({"method_options": {"label_smoothing": 0.5}}, "dpo's label_smoothing must be in [0, 0.5)"),
    ({"method": "ipo", "method_options": {"label_smoothing": 0.1}}, "ipo takes no option 'label_smoothing'"),
    ({"precision": "fp16"}, "precision must be one of ('auto', 'fp32', 'bf16'), got 'fp16'"),
    ({"n_steps": 0}, "n_steps must be > 0, got 0"),
    ({"held_out_fraction": 1.0}, "held_out_fraction must be in [0, 1), got 1.0"),
])
def test_bad_notebook_parameters_stop_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ParameterError) as err:
        run(DPO_NOTEBOOK, {"results_root": str(tmp_path), "profile": "smoke", **overrides})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no run directory, no params.json


def test_empty_prompts_and_completions_are_named():
    model = tiny_gpt2(seed=0)
    with pytest.raises(ValueError, match="empty prompt: every prompt needs at least one token"):
        sample(model, [[5, 6], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty completion: .* check max_new_tokens"):
        completion_batch([[5, 6]], [[]], pad_token_id=0)


def test_a_dataset_missing_a_column_names_the_columns_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_HUB_MIRROR", str(tmp_path))
    folder = tmp_path / "someone" / "reviews" / "plain_text"
    folder.mkdir(parents=True)
    pd.DataFrame({"review": ["a fine film", "dull"], "label": [1, 0]}).to_parquet(folder / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError) as err:
        assets.load_corpus("hub:someone/reviews")
    assert "lacks column(s) ['text']" in str(err.value) and "rename" in str(err.value)
