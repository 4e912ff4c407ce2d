"""pipelines/bench/report.py: the scratch folder, the table and the JSON report every benchmark shares."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.bench.report import machine, print_table, scratch, write_report


def test_report_is_written_with_numpy_numbers_and_paths_in_a_new_folder(tmp_path, capsys):
    out = tmp_path / "new" / "bench.json"
    report = {"steps_per_s": np.float32(12.5), "episodes": np.int64(3), "dir": tmp_path, "load": (0.5, 1.0),
              "machine": machine(ray_cpus=2.0)}
    assert write_report(out, report) == out
    back = json.loads(out.read_text())
    assert back["steps_per_s"] == 12.5 and back["episodes"] == 3 and back["dir"] == str(tmp_path)
    assert back["load"] == [0.5, 1.0] and back["machine"]["ray_cpus"] == 2.0 and back["machine"]["cpus"] >= 1
    assert capsys.readouterr().out == f"wrote {out}\n"


def test_a_temporary_scratch_folder_is_removed_even_on_error_a_named_one_is_kept(tmp_path):
    with pytest.raises(RuntimeError):
        with scratch(None, "bench_test_") as temp:
            (temp / "f").write_text("x")
            raise RuntimeError("benchmark failed")
    assert not temp.exists()
    with scratch(tmp_path / "mine", "bench_test_") as named:
        (named / "f").write_text("x")
    assert (tmp_path / "mine" / "f").read_text() == "x"


def test_table_prints_header_then_rows(capsys):
    print_table("{:<6}{:>6}", ("run", "s"), [("a", "1.00"), ("b", "2.00")])
    assert capsys.readouterr().out.splitlines() == ["run        s", "a       1.00", "b       2.00"]
