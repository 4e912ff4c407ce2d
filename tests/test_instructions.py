"""Issue 15, defect 1: one instruction per task, the benchmark's `task.language`, shared by preprocessing, the
checkpoint and evaluation. Runs over LIBERO's real benchmark metadata (no simulator)."""

from __future__ import annotations

import json

import pytest

from clad.data.hdf5_reader import scan_file
from clad.data.plan import build_plan
from clad.data.preprocess_config import PreprocessConfig
from clad.errors import CladError, DataError
from libero_files import write_demo_file

pytestmark = pytest.mark.libero

CFG = PreprocessConfig()


def _benchmark_tasks():
    from clad.libero.suites import SUITES, get_task, list_tasks

    return [get_task(s, i) for s in SUITES for i in range(len(list_tasks(s)))]


def test_every_task_of_every_suite_maps_to_itself_from_name_file_bddl_and_bddl_text():
    from clad.libero.suites import UnknownTaskError, bddl_language, benchmark_task_for, task_instruction

    tasks = _benchmark_tasks()
    assert len(tasks) == 130
    differ = 0
    for t in tasks:
        assert task_instruction(t) == t.language  # the benchmark's text, what LIBERO's training code uses
        for key in (t.name, f"{t.name}_demo.hdf5", f"/data/{t.suite}/{t.name}_demo.hdf5", t.bddl_path.name):
            assert benchmark_task_for(key) == t, key
        # the BDDL wording (what problem_info stores) leads to the same task, or names it among the candidates
        # when the wording is shared (libero_90 repeats tasks across scenes)
        try:
            assert benchmark_task_for(bddl_language(t), suite=t.suite) == t
        except UnknownTaskError as err:
            assert t.name in str(err) and t.suite == "libero_90"
        differ += bddl_language(t) != t.language
    assert differ == 34  # the texts the old preprocessing stored differ from the benchmark's for 34 tasks
    libero_object = [t for t in tasks if t.suite == "libero_object"]
    assert all(bddl_language(t) != t.language for t in libero_object)  # every libero_object task


def test_unknown_and_ambiguous_keys_give_clear_errors():
    from clad.libero.suites import UnknownTaskError, benchmark_task_for, find_benchmark_task

    with pytest.raises(UnknownTaskError, match="no task name.*_demo.hdf5"):
        benchmark_task_for("fold_the_laundry_demo.hdf5")
    assert find_benchmark_task("fold the laundry") is None
    with pytest.raises(UnknownTaskError, match="names 3 LIBERO tasks"):
        benchmark_task_for("turn on the stove")  # libero_goal, KITCHEN_SCENE3 and KITCHEN_SCENE9
    assert benchmark_task_for("turn on the stove", suite="libero_goal").name == "turn_on_the_stove"
    assert issubclass(UnknownTaskError, CladError)


def test_preprocessing_stores_the_benchmark_instruction_for_every_task(tmp_path):
    """Demo files laid out like upstream's (named after the task, problem_info = BDDL text): the dataset's task
    table holds the benchmark's language for every task of every suite, the file's text kept beside it."""
    from clad.libero.suites import bddl_language

    tasks = _benchmark_tasks()
    scans = []
    for i, t in enumerate(tasks):
        path = write_demo_file(tmp_path / t.suite, t.name, lengths=(3,), image_size=8, seed=i,
                               instruction=bddl_language(t))
        scans.append(scan_file(path, f"{t.suite}/{path.name}", CFG.image_keys, CFG.lowdim_keys))
    plan = build_plan(tmp_path, scans, CFG)
    by_name = {x.name: x for x in plan.tasks}
    assert len(by_name) == 130
    for t in tasks:
        row = by_name[t.name].to_json()
        assert row["instruction"] == t.language
        assert row["file_instruction"] == bddl_language(t)
        assert row["benchmark"] == {"suite": t.suite, "index": t.index, "name": t.name}
        assert row["instruction_source"] == "benchmark"
    # the old behaviour stays available for reproducing runs made before the fix
    old = build_plan(tmp_path, scans, CFG.replace(instruction_source="file"))
    assert {x.name: x.instruction for x in old.tasks}["pick_up_the_ketchup_and_place_it_in_the_basket"] == \
        "Pick the ketchup and place it in the basket"


def test_a_renamed_file_maps_by_its_bddl_name_and_an_unknown_task_keeps_its_text(tmp_path):
    a = write_demo_file(tmp_path, "my_ketchup_copy", lengths=(3,), image_size=8, instruction="whatever")
    import h5py

    with h5py.File(a, "r+") as f:
        f["data"].attrs["bddl_file_name"] = "libero/bddl_files/libero_object/pick_up_the_ketchup_and_place_it_in_the_basket.bddl"
    b = write_demo_file(tmp_path, "OTHER_SCENE_fold_laundry", lengths=(3,), image_size=8, instruction="fold the laundry")
    plan = build_plan(tmp_path, [scan_file(p, p.name, CFG.image_keys, CFG.lowdim_keys) for p in (a, b)], CFG)
    rows = {t.name: t.to_json() for t in plan.tasks}
    assert rows["my_ketchup_copy"]["instruction"] == "pick up the ketchup and place it in the basket"
    assert rows["OTHER_SCENE_fold_laundry"]["instruction"] == "fold the laundry"
    assert rows["OTHER_SCENE_fold_laundry"]["benchmark"] is None


def test_a_file_that_names_several_tasks_is_a_clear_error(tmp_path):
    a = write_demo_file(tmp_path, "SCENE_stove", lengths=(3,), image_size=8, instruction="turn on the stove")
    with pytest.raises(DataError, match="SCENE_stove_demo.hdf5.*instruction_source=file"):
        build_plan(tmp_path, [scan_file(a, a.name, CFG.image_keys, CFG.lowdim_keys)], CFG)


def test_instruction_table_document_round_trip(tmp_path):
    """The table a checkpoint stores (clad.model.task_table) says, per task, what training conditioned on."""
    from clad.model.task_table import read_task_table, write_task_table

    doc = {"tasks": [{"index": 0, "name": "pick_up_the_ketchup_and_place_it_in_the_basket",
                      "instruction": "pick up the ketchup and place it in the basket"}]}
    (tmp_path / "tasks.json").write_text(json.dumps(doc))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_task_table(ckpt, tmp_path)
    table = read_task_table(ckpt)
    assert table.instruction_for("pick_up_the_ketchup_and_place_it_in_the_basket") == \
        "pick up the ketchup and place it in the basket"
    assert table.instruction_for("something_else") is None


# ---------------------------------------------------------------------------------------------- evaluation
class _ResetOnlyEnv:
    """Just enough simulator for an episode with a budget of 0 steps: evaluation's reset path."""

    raw = None

    def reset(self, init_index, settle_steps):
        return {}


@pytest.fixture(scope="module")
def tiny_stage2(tmp_path_factory):
    import torch

    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    return save_checkpoint(CladModel(cfg, fake_stats(cfg)), tmp_path_factory.mktemp("ckpt") / "stage2", "stage2")


def _eval_instructions(checkpoint, tasks):
    from clad.eval.agent_adapter import CladAgentPolicy
    from clad.eval.episode import run_episode

    policy = CladAgentPolicy.from_checkpoint(str(checkpoint))
    return {t.name: run_episode(_ResetOnlyEnv(), policy, t, init_index=0, seed=1, max_steps=0, settle_steps=0).instruction
            for t in tasks}


def test_evaluation_logs_the_training_instruction_for_every_task_of_every_suite(tmp_path, tiny_stage2):
    """preprocessing -> dataset tasks.json -> checkpoint table -> the per-episode log: one string per task."""
    import shutil

    from clad.libero.suites import bddl_language
    from clad.model.task_table import write_task_table

    tasks = _benchmark_tasks()
    scans = []
    for i, t in enumerate(tasks):
        path = write_demo_file(tmp_path / "demos", t.name, lengths=(3,), image_size=8, seed=i,
                               instruction=bddl_language(t))
        scans.append(scan_file(path, path.name, CFG.image_keys, CFG.lowdim_keys))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    trained = {x.name: x.instruction for x in build_plan(tmp_path / "demos", scans, CFG).tasks}
    (dataset / "tasks.json").write_text(json.dumps(
        {"tasks": [x.to_json() for x in build_plan(tmp_path / "demos", scans, CFG).tasks]}))
    ckpt = tmp_path / "stage2"
    shutil.copytree(tiny_stage2, ckpt)
    write_task_table(ckpt, dataset)
    logged = _eval_instructions(ckpt, tasks)
    for t in tasks:
        assert logged[t.name] == trained[t.name] == t.language, t.name


def test_a_checkpoint_trained_before_the_fix_is_evaluated_on_its_training_text_with_a_warning(
        tmp_path, tiny_stage2, caplog):
    import shutil

    from clad.libero.suites import bddl_language, get_task

    ketchup = get_task("libero_object", "pick_up_the_ketchup_and_place_it_in_the_basket")
    old = tmp_path / "old"
    shutil.copytree(tiny_stage2, old)
    (old / "tasks.json").write_text(json.dumps({"tasks": [
        {"index": 0, "name": ketchup.name, "instruction": bddl_language(ketchup)}]}))
    with caplog.at_level("WARNING"):
        logged = _eval_instructions(old, [ketchup])
    assert logged[ketchup.name] == "Pick the ketchup and place it in the basket"
    assert "trained on 'Pick the ketchup" in caplog.text and "benchmark says" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # older still: no table at all
        logged = _eval_instructions(tiny_stage2, [ketchup])
    assert logged[ketchup.name] == ketchup.language and "stores no instruction table" in caplog.text


@pytest.mark.ray
@pytest.mark.slow
def test_clad_preprocess_embeds_the_benchmark_instruction(ray_session, tmp_path):
    """The real Ray preprocessing: upstream-style files (BDDL text in problem_info) of two libero_object tasks
    and one libero_10 task -> tasks.json and language.safetensors hold the benchmark's language."""
    import numpy as np

    from clad.data.language import encode_instructions, load_embeddings
    from clad.libero.suites import bddl_language, get_task
    from pipelines.preprocess import run_preprocess

    tasks = [get_task("libero_object", 4), get_task("libero_object", 5), get_task("libero_10", 7)]
    for i, t in enumerate(tasks):
        write_demo_file(tmp_path / "in", t.name, lengths=(6, 7), image_size=8, seed=i, instruction=bddl_language(t))
    run_preprocess(tmp_path / "in", tmp_path / "out", PreprocessConfig(val_fraction=0.0))
    table = json.loads((tmp_path / "out" / "tasks.json").read_text())["tasks"]
    by_name = {row["name"]: row for row in table}
    assert [by_name[t.name]["instruction"] for t in tasks] == [t.language for t in tasks]
    assert by_name[tasks[0].name]["file_instruction"].startswith("Pick the")
    emb = load_embeddings(tmp_path / "out" / "language.safetensors")
    np.testing.assert_allclose(emb, encode_instructions([row["instruction"] for row in table]), atol=1e-6)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_actor", "server"])
def test_clad_eval_logs_the_instruction_per_episode(ray_session, tmp_path, tiny_stage2, mode):
    """`clad eval` on the real simulator: every line of episodes.jsonl names the instruction the CLaD agent
    was conditioned on, in-actor and through the policy server alike."""
    import shutil

    from clad.eval.config import EvalConfig
    from clad.eval.policy import PolicySpec
    from clad.libero.suites import get_task
    from pipelines.evaluate import run_evaluation

    ckpt = tmp_path / "stage2"
    shutil.copytree(tiny_stage2, ckpt)
    task = get_task("libero_object", 1)
    (ckpt / "tasks.json").write_text(json.dumps({"tasks": [{"index": 0, "name": task.name,
                                                            "instruction": task.language}]}))
    cfg = EvalConfig(suite="libero_object", tasks=("1",), episodes_per_task=1, max_steps=2, settle_steps=1,
                     actors=1, camera_size=32, video_episodes=0, policy_mode=mode,
                     policy=PolicySpec(kind="clad", checkpoint=str(ckpt)))
    report = run_evaluation(cfg, tmp_path / "eval", use_mlflow=False, progress=False)
    (record,) = [json.loads(x) for x in (report.out_dir / "episodes.jsonl").read_text().splitlines() if x.strip()]
    assert record["error"] is None, record["error"]
    assert record["instruction"] == task.language == "pick up the cream cheese and place it in the basket"
