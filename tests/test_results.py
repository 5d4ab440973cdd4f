"""Run directories: finished runs only reach the figures; tables render."""

import pandas as pd
import pytest

from dpo_core import results


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
