"""Result files: appending rows (a line cut by a crash is dropped, never half-read), reading them back, and
the run file a resumed run must match."""

import pytest

from rtchunk.kinetix import results


def test_append_rows_keeps_the_header_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "stats.csv"
    results.append_rows(path, [{"a": 1, "b": 2.5}])
    results.append_rows(path, [{"b": 4, "a": 3, "extra": "x"}, {"a": 5}])
    assert results.read_rows(path) == [{"a": "1", "b": "2.5"}, {"a": "3", "b": "4"}, {"a": "5", "b": ""}]
    path.write_bytes(path.read_bytes() + b"7,8")  # a crash in the middle of a row
    assert len(results.read_rows(path)) == 3 and path.read_bytes().endswith(b"7,8")  # reading changes nothing
    results.append_rows(path, [{"a": 9, "b": 10}])
    assert [r["a"] for r in results.read_rows(path)] == ["1", "3", "5", "9"]
    assert path.read_text().count("\n") == 5
    with pytest.raises(ValueError, match="different columns"):
        results.read_rows(path, columns=("a", "c"))
    assert results.read_rows(tmp_path / "missing.csv") == []


def test_eval_values_and_result_files(tmp_path):
    assert results.format_value(0.123456789) == "0.123457" and results.format_value(float("nan")) == ""
    assert results.format_value(3) == 3
    assert results.results_path(tmp_path) == tmp_path / "results.csv"
    assert results.results_path(tmp_path, "1/3") == tmp_path / "results.shard-1-of-3.csv"
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ValueError, match="shard must"):
            results.parse_shard(bad)


def test_run_file_names_every_setting_that_differs(tmp_path):
    path = tmp_path / "run" / results.RUN_FILE
    results.check_run_file(path, {"num_envs": 4})  # nothing there yet: fine, and nothing written
    assert not path.parent.exists()
    results.write_run_file(path, {"num_envs": 4, "seed": 0}, names=["a"])
    results.check_run_file(path, {"num_envs": 4, "seed": 0})
    with pytest.raises(ValueError, match=r"different settings \(num_envs: 4 -> 8; seed: 0 -> 1\)"):
        results.check_run_file(path, {"num_envs": 8, "seed": 1})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        results.check_run_file(path, {"num_envs": 4})


def test_a_setting_added_later_matches_a_run_file_without_it_only_when_off(tmp_path):
    path = tmp_path / "run" / results.RUN_FILE
    results.write_run_file(path, {"seed": 0, "env": {"shrink": True}})
    results.check_run_file(path, {"seed": 0, "env": {"shrink": True, "compact_obs": False}, "note": None})
    with pytest.raises(ValueError, match="env"):
        results.check_run_file(path, {"seed": 0, "env": {"shrink": True, "compact_obs": True}})
    with pytest.raises(ValueError, match="env"):  # a setting the run file has must still match
        results.check_run_file(path, {"seed": 0, "env": {"shrink": False, "compact_obs": False}})
