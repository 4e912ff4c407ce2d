"""Paired comparison of evaluation folders (`clad compare`): the McNemar test and the scene matching."""

from __future__ import annotations

import json
import math

import pytest

from clad.errors import CladError
from clad.eval.compare import compare_runs, load_eval_run, mcnemar_exact, parse_init_states
from clad.eval.protocol import episode_seed
from clad.eval.results import EpisodeResult, ResultLog
from pipelines.cli import main as clad_main


def write_eval(folder, outcomes: dict[int, list[bool]], suite="libero_object", base_seed=0):
    """An evaluation folder as `clad eval` writes it: task -> success of episodes 0, 1, ..."""
    log = ResultLog(folder / "episodes.jsonl")
    for task, successes in outcomes.items():
        for ep, ok in enumerate(successes):
            log.append(EpisodeResult(suite=suite, task_index=task, task_name=f"task{task}", episode=ep,
                                     init_index=ep, seed=episode_seed(base_seed, task, ep), success=ok,
                                     steps=100, wall_s=1.0))
    return folder


@pytest.mark.parametrize("only_a, only_b, expected", [
    (0, 0, 1.0),                                   # no discordant scene: no evidence of a difference
    (5, 0, 2 / 32),                                # the smallest all-one-way count below 0.1
    (1, 1, 1.0),
    (3, 1, 2 * (1 + 4) / 16),                      # 2 * P(X <= 1), X ~ Bin(4, 1/2)
])
def test_mcnemar_exact_matches_the_binomial_tail(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(expected)  # two-sided: symmetric


def test_mcnemar_exact_large_counts_stay_finite_and_ordered():
    # 32 vs 19 and 28 vs 9: the two comparisons quoted in docs/results.md
    p1, p2 = mcnemar_exact(32, 19), mcnemar_exact(28, 9)
    assert 0.05 < p1 < 0.2 and p2 < 0.005 and math.isfinite(mcnemar_exact(600, 400))
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_compare_pairs_scenes_and_counts_discordant_ones(tmp_path):
    a = write_eval(tmp_path / "a", {0: [True, True, False, False], 1: [True, False, False]})
    # b: same scenes plus one more episode of task 1 that a never ran
    b = write_eval(tmp_path / "b", {0: [True, False, True, True], 1: [True, True, False, True]})
    res = compare_runs([load_eval_run(a), load_eval_run(b)])
    assert [r["successes"] for r in res["runs"]] == [3, 6]
    assert [r["n"] for r in res["runs"]] == [7, 8]
    pair = res["paired"][0]
    assert (pair["a_name"], pair["b_name"]) == ("a", "b")
    assert (pair["n"], pair["both"], pair["only_a"], pair["only_b"], pair["neither"]) == (7, 2, 1, 3, 1)
    assert pair["a"]["successes"] == 3 and pair["b"]["successes"] == 5  # b's unpaired success not counted
    assert pair["diff"] == pytest.approx(2 / 7)
    assert pair["p_mcnemar"] == pytest.approx(mcnemar_exact(1, 3))
    assert pair["unpaired"] == {"a": 0, "b": 1}
    t0 = pair["tasks"]["libero_object/0"]
    assert (t0["only_a"], t0["only_b"], t0["n"]) == (1, 2, 4)


def test_different_seeds_share_no_scene_and_say_how_to_fix(tmp_path):
    a = write_eval(tmp_path / "a", {0: [True, False]}, base_seed=0)
    b = write_eval(tmp_path / "b", {0: [True, False]}, base_seed=7)
    with pytest.raises(CladError, match="--seed"):
        compare_runs([load_eval_run(a), load_eval_run(b)])


def test_bad_inputs_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(CladError, match="clad eval --out"):
        load_eval_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "episodes.jsonl").write_text("")
    with pytest.raises(CladError, match="no readable episode"):
        load_eval_run(tmp_path / "empty")
    a = write_eval(tmp_path / "a", {0: [True]})
    with pytest.raises(CladError, match="at least two"):
        compare_runs([load_eval_run(a)])
    with pytest.raises(CladError, match="--names"):
        compare_runs([load_eval_run(a), load_eval_run(a)])


def test_cli_compares_two_runs_named_alike_and_writes_json(tmp_path, capsys):
    # two pipelines' `eval` folders share a name: the CLI labels them by their parent too
    a = write_eval(tmp_path / "po" / "eval", {0: [True, False, False]})
    b = write_eval(tmp_path / "clad" / "eval", {0: [True, True, True]})
    out = tmp_path / "cmp.json"
    assert clad_main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "po/eval (a) vs clad/eval (b) on 3 shared scenes" in text
    saved = json.loads(out.read_text())
    assert saved["paired"][0]["only_b"] == 2
    assert clad_main(["compare", str(a), str(b), "--names", "one"]) == 2  # a CladError: one name for two folders
    assert "one per folder" in capsys.readouterr().err


def test_init_states_keep_only_those_scenes(tmp_path, capsys):
    # episodes 0-1 held out, 2-3 the demonstrations' own scenes: each half is compared on its own
    a = write_eval(tmp_path / "a", {0: [False, False, True, True]})
    b = write_eval(tmp_path / "b", {0: [True, True, True, True]})
    held_out = compare_runs([load_eval_run(a, init_states=range(0, 2)), load_eval_run(b, init_states=range(0, 2))])
    assert held_out["paired"][0]["n"] == 2 and held_out["paired"][0]["only_b"] == 2
    out = tmp_path / "cmp.json"
    assert clad_main(["compare", str(a), str(b), "--init-states", "2-3", "--out", str(out)]) == 0
    assert "init states 2-3 only" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["init_states"] == [2, 3] and saved["paired"][0]["only_b"] == 0
    assert [r["n"] for r in saved["runs"]] == [2, 2]


@pytest.mark.parametrize("text", ["24-0", "a-b", "-3", "0-"])
def test_bad_init_states_say_how_to_write_them(text):
    with pytest.raises(CladError, match="--init-states .*e.g. --init-states 0-24"):
        parse_init_states(text)


def test_init_states_that_match_no_episode_name_the_file(tmp_path):
    a = write_eval(tmp_path / "a", {0: [True, False]})
    with pytest.raises(CladError, match="no episode started from init states 25-49"):
        load_eval_run(a, init_states=parse_init_states("25-49"))


def test_goal_progress_is_paired_with_an_exact_sign_test(tmp_path):
    """Partial credit (goal predicates met) on the same scenes; successes count as full progress."""
    def folder(name, met):  # one task with two goal predicates; met[k] for episode k (2 = success)
        log = ResultLog(tmp_path / name / "episodes.jsonl")
        for ep, m in enumerate(met):
            log.append(EpisodeResult(suite="libero_10", task_index=0, task_name="t", episode=ep, init_index=ep,
                                     seed=episode_seed(0, 0, ep), success=m == 2, steps=10, wall_s=1.0,
                                     goals_met=m, goals_total=2))
        return load_eval_run(tmp_path / name)

    a = folder("a", [0, 0, 0, 1, 1, 0, 2])
    b = folder("b", [1, 1, 1, 1, 2, 0, 2])
    g = compare_runs([a, b])["paired"][0]["goal_progress"]
    assert (g["n"], g["b_better"], g["b_worse"]) == (7, 4, 0)
    assert g["a"] == pytest.approx((0.5 + 0.5 + 1) / 7) and g["b"] == pytest.approx((0.5 * 4 + 1 + 1) / 7)
    assert g["p_sign"] == pytest.approx(mcnemar_exact(0, 4))
    pair = compare_runs([a, b])["paired"][0]
    assert pair["tasks"]["libero_10/0"]["goal_progress"]["b_better"] == 4
    # folders written before goals were recorded have no progress block, and the comparison still works
    old = write_eval(tmp_path / "old", {0: [True, False]}, suite="libero_10")
    assert compare_runs([load_eval_run(old), a])["paired"][0]["goal_progress"] is None


def test_replicates_sharing_a_name_are_pooled_and_paired_seed_by_seed(tmp_path, capsys):
    # two training seeds per variant, the same three scenes each: seed k of one pairs with seed k of the other
    c0 = write_eval(tmp_path / "c0", {0: [True, True, False]})
    c1 = write_eval(tmp_path / "c1", {0: [False, True, True]})
    x0 = write_eval(tmp_path / "x0", {0: [False, True, False]})   # vs c0: 1 scene won alone by the control
    x1 = write_eval(tmp_path / "x1", {0: [True, False, True]})    # vs c1: 1 vs 1
    out = tmp_path / "cmp.json"
    assert clad_main(["compare", str(c0), str(c1), str(x0), str(x1), "--names", "ctl", "ctl", "clad", "clad",
                      "--out", str(out)]) == 0
    assert "2 replicates pooled" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert [(r["name"], r["successes"], r["n"]) for r in res["runs"]] == [("ctl", 4, 6), ("clad", 3, 6)]
    assert res["runs"][0]["replicates"] == [str(c0), str(c1)]
    pair = res["paired"][0]
    assert (pair["n"], pair["only_a"], pair["only_b"], pair["both"]) == (6, 2, 1, 2)
    assert pair["tasks"]["libero_object/0"]["n"] == 6  # per-task blocks pool the replicates too
    # a variant with fewer replicates than the other cannot be paired seed by seed
    assert clad_main(["compare", str(c0), str(c1), str(x0), "--names", "ctl", "ctl", "clad"]) == 2
    assert "same number of folders" in capsys.readouterr().err
