"""Best-k selection, rank correlation and the eval_every config checks (plain Python, no Ray)."""

from __future__ import annotations

import pytest

from clad.errors import ConfigError
from clad.training.closed_loop import rank_correlations, select_best, should_evaluate, spearman, spearman_test


def _rec(step, successes, n=10, loss=None, **kw):
    return {"step": step, "successes": successes, "n": n, "rate": successes / n,
            "val": {} if loss is None else {"val/loss": loss}, **kw}


def test_best_k_by_success_then_validation_loss_then_later_step():
    records = [_rec(100, 3, loss=0.5), _rec(200, 7, loss=0.4), _rec(300, 7, loss=0.2), _rec(400, 5, loss=0.1),
               _rec(500, 7, loss=0.2), _rec(600, 9, loss=0.9, complete=False)]
    best = select_best(records, 3)
    # 600 is incomplete (interrupted), so it cannot win; 300 and 500 tie on success and loss: later step first
    assert [r["step"] for r in best] == [500, 300, 200]
    assert [r["step"] for r in select_best(records, 10)] == [500, 300, 200, 400, 100]


def test_a_missing_tie_break_metric_loses_the_tie():
    best = select_best([_rec(100, 4), _rec(200, 4, loss=3.0)], 1)
    assert best[0]["step"] == 200


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    x = [0.3, 0.1, 0.1, 0.5, 0.2, 0.9]
    y = [0.2, 0.4, 0.5, 0.1, 0.4, 0.0]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None          # too few checkpoints
    assert spearman([1, 2, 3], [0.5, 0.5, 0.5]) is None  # success never changed: undefined


def test_spearman_p_value_is_the_exact_permutation_one_for_few_checkpoints():
    # 5 checkpoints in perfect order: of the 5! re-pairings only this one and its reverse reach |rho| = 1
    rho, p = spearman_test([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 120)
    rho, p = spearman_test([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / 24)
    # an unrelated order is not significant; a larger run is Monte-Carlo with a fixed seed (repeatable)
    assert spearman_test([1, 2, 3, 4, 5, 6], [0.3, 0.1, 0.6, 0.2, 0.5, 0.4])[1] > 0.3
    x, y = list(range(12)), [0.1, 0.0, 0.2, 0.4, 0.3, 0.5, 0.5, 0.7, 0.6, 0.8, 0.9, 0.9]
    assert spearman_test(x, y) == spearman_test(x, y) and spearman_test(x, y)[1] < 0.01
    assert spearman_test([1, 2], [1, 2]) == (None, None)


def test_rank_correlations_per_validation_metric():
    records = [{**_rec(s, k), "val": {"val/loss": l, "val/action_mse": m}}
               for s, k, l, m in [(1, 2, 0.9, 0.1), (2, 5, 0.5, 0.2), (3, 8, 0.1, 0.3), (4, 6, 0.3, 0.4)]]
    out = rank_correlations(records)
    assert out["val/loss"]["rho"] == pytest.approx(-1.0)  # lower loss = higher success, in order
    assert out["val/action_mse"]["rho"] == pytest.approx(0.8)
    assert out["val/loss"]["n"] == 4 and out["val/loss"]["steps"] == [1, 2, 3, 4]
    assert out["val/loss"]["p"] == pytest.approx(2 / 24)
    assert "goal_progress" not in out["val/loss"]  # not recorded by these checkpoints


def test_rank_correlations_against_goal_progress_separate_checkpoints_that_all_fail():
    # no checkpoint succeeds (success is constant: rho undefined) but partial credit still ranks them
    records = [{**_rec(s, 0), "goal_progress": g, "val": {"val/loss": l}}
               for s, g, l in [(1, 0.1, 0.9), (2, 0.3, 0.5), (3, 0.5, 0.2), (4, 0.2, 0.6)]]
    out = rank_correlations(records)["val/loss"]
    assert out["rho"] is None and out["n"] == 4
    assert out["goal_progress"]["rho"] == pytest.approx(-1.0) and out["goal_progress"]["steps"] == [1, 2, 3, 4]


def test_which_checkpoints_are_rolled_out():
    assert [s for s in range(1, 11) if should_evaluate(s, 4, 10)] == [4, 8, 10]
    assert not should_evaluate(4, 0, 10)


def test_eval_every_config_errors_name_the_field_and_fix():
    from clad.training.config import load_train_config

    base = ["dataset_dir=ds", "stage=stage2", "model.policy.foresight=none", "model_preset=tiny",
            "closed_loop.suite=libero_object", "checkpoint_every=200"]
    cfg = load_train_config(None, [*base, "eval_every=400"])
    assert cfg.eval_every == 400 and cfg.closed_loop.suite == "libero_object"
    with pytest.raises(ConfigError, match=r"eval_every \(300\) must be a multiple of checkpoint_every \(200\).*"
                                          r"set eval_every=400"):
        load_train_config(None, [*base, "eval_every=300"])
    with pytest.raises(ConfigError, match="stage 1 has no policy"):
        load_train_config(None, ["dataset_dir=ds", "eval_every=200", "checkpoint_every=200",
                                 "closed_loop.suite=libero_object"])
    with pytest.raises(ConfigError, match="closed_loop.suite"):
        load_train_config(None, [*base[:-2], "checkpoint_every=200", "eval_every=200"])
    with pytest.raises(ConfigError, match="closed_loop.episodes_per_tsk"):
        load_train_config(None, [*base, "closed_loop.episodes_per_tsk=3"])


def test_best_folder_pruning_and_rank_file_from_result_files(tmp_path, capsys):
    """The bookkeeping over finished evaluations (no Ray needed): best/ follows the leader, models of
    checkpoints that fall out of the top-k are pruned, and the rank correlation covers every checkpoint."""
    import json

    from clad.training.config import load_train_config
    from pipelines.eval_during_training import ClosedLoopEvaluator, print_closed_loop

    cfg = load_train_config(None, ["dataset_dir=ds", f"output_dir={tmp_path}", "stage=stage2", "model_preset=tiny",
                                   "model.policy.foresight=none", "checkpoint_every=1", "eval_every=1",
                                   "closed_loop.suite=libero_object", "closed_loop.keep_best=2"])
    ev = ClosedLoopEvaluator(cfg, tmp_path / "ray_run")

    def finish(step, successes, loss):
        d = cfg.run_dir / "closed_loop" / f"step_{step:07d}"
        (d / "model").mkdir(parents=True)
        for name in ("model.safetensors", "config.json", "stats.json", "tasks.json"):
            (d / "model" / name).write_text(f"{name} of step {step}")
        (d / "result.json").write_text(json.dumps({**_rec(step, successes, n=4, loss=loss), "ci95": [0, 1],
                                                   "model": str(d / "model")}))
        ev.update_best()

    finish(1, 1, 0.9)
    assert (cfg.run_dir / "best" / "model.safetensors").read_text() == "model.safetensors of step 1"
    finish(2, 3, 0.5)
    finish(3, 2, 0.7)
    best = json.loads((cfg.run_dir / "best_checkpoints.json").read_text())
    assert [b["step"] for b in best["best"]] == [2, 3]
    assert (cfg.run_dir / "best" / "model.safetensors").read_text() == "model.safetensors of step 2"
    # the instruction table travels with the model: `clad eval --checkpoint <run>/best` conditions on it
    assert (cfg.run_dir / "best" / "tasks.json").read_text() == "tasks.json of step 2"
    assert not (cfg.run_dir / "closed_loop" / "step_0000001" / "model").exists()  # fell out of the top 2
    assert (cfg.run_dir / "closed_loop" / "step_0000001" / "result.json").is_file()
    ranks = json.loads((cfg.run_dir / "closed_loop" / "rank_correlation.json").read_text())
    assert ranks["metrics"]["val/loss"]["rho"] == pytest.approx(-1.0)
    print_closed_loop(cfg.run_dir)
    out = capsys.readouterr().out
    assert "step       2: success 3/4 = 75.0 %" in out and "Best checkpoint: step 2" in out and "val/loss -1.00" in out


def test_pipeline_can_evaluate_the_best_checkpoint_only_with_eval_every():
    from pipelines.pipeline import load_pipeline_config

    cfg = load_pipeline_config(None, ["eval_checkpoint=best", "stage2.eval_every=500", "stage2.checkpoint_every=500",
                                      "stage2.closed_loop.suite=libero_object"])
    assert cfg.eval_checkpoint == "best"
    with pytest.raises(ConfigError, match="eval_checkpoint=best needs evaluation during training"):
        load_pipeline_config(None, ["eval_checkpoint=best"])
    with pytest.raises(ConfigError, match="'final' or 'best'"):
        load_pipeline_config(None, ["eval_checkpoint=last"])


def test_eval_every_with_a_bucket_output_dir_loads():
    """Evaluation during training works with an output_dir in object storage (tests/test_closed_loop_bucket.py):
    train, tune's base and the pipeline's stage 2 accept it."""
    from clad.training.config import load_train_config
    from pipelines.pipeline import load_pipeline_config

    base = ["dataset_dir=ds", "stage=stage2", "model.policy.foresight=none", "model_preset=tiny",
            "closed_loop.suite=libero_object", "checkpoint_every=200", "eval_every=200"]
    assert load_train_config(None, [*base, "output_dir=s3://b/runs"]).eval_every == 200
    assert load_train_config(None, [*base, "output_dir=file:///tmp/runs"]).eval_every == 200
    load_pipeline_config(None, ["output_dir=s3://b/p", "input_dir=/data/libero", "stage2.eval_every=500",
                                "stage2.checkpoint_every=500", "stage2.closed_loop.suite=libero_object"])


def test_pipeline_cache_features_refuses_what_would_fail_after_stage_1():
    from pipelines.pipeline import load_pipeline_config

    with pytest.raises(ConfigError, match="cache_features: policy.augment='random_crop'"):
        load_pipeline_config(None, ["cache_features=true", "stage2.model.policy.augment=random_crop"])
    # a bucket output_dir is fine: the feature set goes to the bucket too (docs/storage.md)
    assert load_pipeline_config(None, ["cache_features=true", "output_dir=s3://b/p", "input_dir=/data/libero"])
    assert load_pipeline_config(None, ["cache_features=true"]).cache_features


def test_checkpoint_copies_keep_the_instruction_table(tmp_path):
    from clad.model.task_table import TASK_TABLE
    from pipelines.eval_during_training import OPTIONAL_MODEL_FILES, _copy_dir

    assert TASK_TABLE in OPTIONAL_MODEL_FILES
    src = tmp_path / "checkpoint_000001"
    src.mkdir()
    for name in ("model.safetensors", "config.json", "stats.json", TASK_TABLE, "training_state.json"):
        (src / name).write_text(name)
    _copy_dir(src, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "model.safetensors",
                                                                      "stats.json", TASK_TABLE]
    (src / TASK_TABLE).unlink()  # a dataset without a table (older preprocessing): still copied
    _copy_dir(src, tmp_path / "copy")
    assert not (tmp_path / "copy" / TASK_TABLE).exists() and (tmp_path / "copy" / "config.json").is_file()
