"""Run directories: finished runs only reach the figures; tables render."""

import json

import numpy as np
import pandas as pd
import pytest

from dpo_core import results
from dpo_core.imdb import loop_share


def make_run(root, name, finished, reward):
    path = results.run_dir(root, "p", "04_x", name)
    results.start_run(path, {"method": "dpo", "beta": 0.1})
    results.save_rows(path / "metrics.csv", [{"step": 0, "kl": 0.0, "reward": 0.5}, {"step": 1, "kl": 1.0, "reward": reward}])
    if finished:
        results.finish_run(path)
    return path


def test_load_metrics_reads_finished_runs_only(tmp_path, capsys):
    make_run(tmp_path, "a", True, 0.7)
    make_run(tmp_path, "b", False, 0.9)
    frame = results.load_metrics(tmp_path, "p", ["04_x", "05_none_yet"])
    assert list(frame.run.unique()) == ["a"] and frame.reward.max() == 0.7
    assert set(frame.columns) >= {"step", "kl", "reward", "notebook", "run", "method", "beta"}
    assert "skipping 1 unfinished run" in capsys.readouterr().out
    assert frame.attrs["unfinished"] == ["04_x/b"]


def test_restarting_a_run_clears_its_finished_marker(tmp_path):
    path = make_run(tmp_path, "a", True, 0.7)
    results.start_run(path, {"method": "dpo"})
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        results.load_metrics(tmp_path, "p", ["04_x"])
    with pytest.raises(FileNotFoundError, match="has not finished"):
        results.require_finished(path)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    results.save_rows(tmp_path / "m.csv", [{"a": 1, "b": 2.5}])
    results.save_json(tmp_path / "p.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "p.json"]
    assert pd.read_csv(tmp_path / "m.csv").to_dict("records") == [{"a": 1, "b": 2.5}]


def test_markdown_table():
    table = results.markdown_table([{"m": "dpo", "kl": 1.23456}], ["m", "kl"])
    assert table.splitlines() == ["| m | kl |", "|---|---|", "| dpo | 1.235 |"]


def test_loop_share_hand_computed(tmp_path):
    rows = [{"step": 0, "distinct_2": 1.0, "reward": 0.4, "reference_nll": 4.0},
            {"step": 0, "distinct_2": 0.9, "reward": 0.6, "reference_nll": 5.0},
            {"step": 10, "distinct_2": 0.2, "reward": 0.9, "reference_nll": 1.0},  # a loop
            {"step": 10, "distinct_2": 0.95, "reward": 0.5, "reference_nll": 6.0},
            {"step": 10, "distinct_2": 0.5, "reward": 0.7, "reference_nll": 2.0}]  # a loop
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = loop_share(tmp_path)
    assert table.loc[0, "loops"] == 0 and np.isnan(table.loc[0, "reward_loops"])
    assert table.loc[0, "reward_rest"] == pytest.approx(0.5) and table.loc[0, "reference_nll"] == pytest.approx(4.5)
    assert table.loc[10, "loops"] == pytest.approx(2 / 3) and table.loc[10, "reward_loops"] == pytest.approx(0.8)
    assert table.loc[10, "reward_rest"] == pytest.approx(0.5) and table.loc[10, "reference_nll"] == pytest.approx(3.0)


def test_finish_run_writes_each_file_by_its_suffix_then_marks_the_run_finished(tmp_path):
    import torch

    head = torch.nn.Linear(2, 1)
    path = results.start_run(results.run_dir(tmp_path, "p", "04_x", "a"), {"method": "dpo"})
    results.finish_run(path, {"metrics.csv": [{"step": 0, "reward": 0.5}], "samples.jsonl": [{"t": "x"}],
                              "extra.json": {"k": 1}, "policy.safetensors": head})
    assert pd.read_csv(path / "metrics.csv").to_dict("records") == [{"step": 0, "reward": 0.5}]
    assert (path / "samples.jsonl").read_text() == '{"t": "x"}\n' and json.loads((path / "extra.json").read_text()) == {"k": 1}
    copy = torch.nn.Linear(2, 1)
    results.load_trained_parameters(copy, path / "policy.safetensors")
    assert torch.equal(copy.weight, head.weight) and (path / "FINISHED").exists()


def test_finish_run_refuses_an_unknown_suffix_before_marking_the_run_finished(tmp_path):
    path = results.start_run(results.run_dir(tmp_path, "p", "04_x", "a"), {})
    with pytest.raises(ValueError, match="cannot write 'log.txt'"):
        results.finish_run(path, {"metrics.csv": [{"a": 1}], "log.txt": "x"})
    assert not (path / "FINISHED").exists() and not (path / "metrics.csv").exists()  # nothing half-written


def test_start_run_on_another_process_writes_nothing(tmp_path):
    path = results.start_run(results.run_dir(tmp_path, "p", "04_x", "a"), {"x": 1}, write=False)
    assert path.is_dir() and list(path.iterdir()) == []
