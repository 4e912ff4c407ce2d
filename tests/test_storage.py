"""Object-storage locations end to end, against an S3-compatible server (moto's server mode on 127.0.0.1;
no real cloud is reachable here) that checks credentials and IAM policies like S3 does.

The driver runs from its own folder that the Ray workers may not read (tests/storage_hooks.py refuses and
records any worker access to it), so nothing silently depends on a path only the driver's machine has:
the dataset, the checkpoints and the evaluation outputs all live in the bucket; only the raw LIBERO files
(a shared mount in production) and the MLflow store (the head's tracking server) are outside it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from clad import storage
from clad.storage import StorageError
from libero_files import write_demo_file

BUCKET = "clad-test"
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- S3 server

def _iam_user(iam, name: str, actions: list[str]) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="access", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 + IAM on a free port: bucket `clad-test`, a read-write and a read-only user, then
    authentication switched on (unknown keys, unsigned requests and denied actions fail as on S3)."""
    import boto3
    import moto.settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="admin", aws_secret_access_key="x")
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **admin)
    # moto keeps IAM in-process across servers: names per server, so modules sharing this fixture coexist
    users = {"writer": _iam_user(iam, f"writer-{port}", ["s3:*"]),
             "reader": _iam_user(iam, f"reader-{port}", ["s3:GetObject", "s3:ListBucket"])}
    before = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    yield {"endpoint": endpoint, **users}
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = before
    server.stop()


@pytest.fixture(scope="module")
def env(s3, tmp_path_factory):
    """The standard AWS variables a user sets for an S3-compatible endpoint, and the test's folders."""
    root = tmp_path_factory.mktemp("s3env")
    dirs = {k: root / k for k in ("driver", "shared", "node_cache")}
    for d in dirs.values():
        d.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", s3["endpoint"])
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role here: do not wait for one
        mp.setenv("AWS_ACCESS_KEY_ID", s3["writer"][0])
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3["writer"][1])
        mp.setenv("CLAD_CACHE_DIR", str(dirs["driver"] / "cache"))
        yield {"mp": mp, **dirs}


def _use_keys(mp, keys):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        mp.delenv(var, raising=False)
    if keys:
        mp.setenv("AWS_ACCESS_KEY_ID", keys[0])
        mp.setenv("AWS_SECRET_ACCESS_KEY", keys[1])


# ----------------------------------------------------------------------------------------------- the layer

def test_atomic_json_list_and_delete(env):
    base = f"s3://{BUCKET}/unit"
    storage.write_json(storage.join(base, "a", "doc.json"), {"x": 1})
    storage.write_bytes(storage.join(base, "a", "b.parquet"), b"PAR1")
    assert storage.read_json(f"{base}/a/doc.json") == {"x": 1}
    assert storage.list_files(f"{base}/a", ".parquet") == [f"{base}/a/b.parquet"]
    assert storage.is_file(f"{base}/a/doc.json") and not storage.exists(f"{base}/nothing")
    storage.delete(f"{base}/a")
    assert storage.list_files(f"{base}/a") == []
    local = env["shared"] / "unit"
    storage.write_json(local / "doc.json", {"y": 2})
    assert json.loads((local / "doc.json").read_text()) == {"y": 2}
    assert [p.name for p in local.iterdir()] == ["doc.json"]  # no temp file left behind


def test_local_copy_is_cached_per_node_and_refreshed_when_the_folder_changes(env):
    base = f"s3://{BUCKET}/ckpt"
    storage.write_bytes(f"{base}/model.safetensors", b"v1")
    storage.write_json(f"{base}/config.json", {})
    first = storage.local_copy(base)
    assert (first / "model.safetensors").read_bytes() == b"v1"
    assert first.is_relative_to(env["driver"] / "cache")
    assert storage.local_copy(base) == first  # cached: same folder, nothing downloaded again
    storage.write_bytes(f"{base}/model.safetensors", b"v2-longer")
    second = storage.local_copy(base)
    assert second != first and (second / "model.safetensors").read_bytes() == b"v2-longer"
    assert storage.local_copy(env["shared"]) == env["shared"]  # local folders are used in place


def test_working_copy_uploads_complete_objects_and_keeps_the_longer_log(env):
    loc = f"s3://{BUCKET}/wc"
    wc = storage.WorkingCopy(loc)
    (wc.local / "episodes.jsonl").write_text('{"a": 1}\n')
    (wc.local / "summary.json").write_text("{}")
    (wc.local / "mlflow_run.json").write_text("{}")
    wc.push(last=["summary.json"])
    assert storage.read_text(f"{loc}/episodes.jsonl") == '{"a": 1}\n'
    assert not storage.exists(f"{loc}/mlflow_run.json")  # machine-local bookkeeping stays local
    (wc.local / "episodes.jsonl").write_text('{"a": 1}\n{"b": 2}\n')  # grew after the last upload
    again = storage.WorkingCopy(loc)
    assert (again.local / "episodes.jsonl").read_text().count("\n") == 2
    storage.delete(storage.join(loc, "episodes.jsonl"))
    storage.write_text(f"{loc}/episodes.jsonl", '{"a": 1}\n{"b": 2}\n{"c": 3}\n')  # uploaded elsewhere
    assert (storage.WorkingCopy(loc).local / "episodes.jsonl").read_text().count("\n") == 3


def test_an_interrupted_upload_leaves_no_object(env, tmp_path):
    """pyarrow completes a multipart upload when its stream is closed, also by an exception: the layer must
    publish the whole object or nothing, so a resume never trusts half a file."""
    loc = f"s3://{BUCKET}/interrupted/task_demo.hdf5"
    storage.write_bytes(loc.replace("task_demo", "other_demo"), b"ok")

    def half(out):
        out.write(b"half of the file")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the upload

    with pytest.raises(KeyboardInterrupt):
        storage._put(loc, half)
    assert not storage.exists(loc)
    assert [storage.name(f) for f in storage.list_files(f"s3://{BUCKET}/interrupted")] == ["other_demo.hdf5"]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    storage.upload_file(big, loc)  # streamed, not read into memory
    assert storage.read_bytes(loc) == big.read_bytes()


def test_a_pretrained_backbone_folder_in_a_bucket_is_read_from_the_node_cache(env):
    from clad.errors import CheckpointError
    from clad.model.pretrained_dir import read_pretrained_dir

    uri = f"s3://{BUCKET}/weights/dnce"
    storage.write_bytes(f"{uri}/model.safetensors", b"weights")
    storage.write_json(f"{uri}/config.json", {"output_dim": 8})
    path, meta = read_pretrained_dir(uri, "decisionnce_rn50")
    assert meta == {"output_dim": 8} and (path / "model.safetensors").read_bytes() == b"weights"
    assert path.is_relative_to(env["driver"] / "cache")
    with pytest.raises(CheckpointError, match=rf"vision.checkpoint_dir=s3://{BUCKET}/weights/none: missing model"):
        read_pretrained_dir(f"s3://{BUCKET}/weights/none", "decisionnce_rn50")


def test_compare_reads_evaluation_folders_in_a_bucket(env, tmp_path, capsys):
    from clad.eval.protocol import episode_seed
    from clad.eval.results import EpisodeResult, ResultLog
    from pipelines.cli import main as clad_main

    for run, outcomes in (("base", [False, False, True]), ("ours", [True, True, True])):
        log = ResultLog(tmp_path / run / "episodes.jsonl")
        for ep, ok in enumerate(outcomes):
            log.append(EpisodeResult(suite="libero_object", task_index=0, task_name="task0", episode=ep, init_index=ep,
                                     seed=episode_seed(0, 0, ep), success=ok, steps=10, wall_s=1.0))
        storage.upload_dir(tmp_path / run, f"s3://{BUCKET}/cmp/{run}/eval")
    out = f"s3://{BUCKET}/cmp/compare.json"
    assert clad_main(["compare", f"s3://{BUCKET}/cmp/base/eval", f"s3://{BUCKET}/cmp/ours/eval", "--out", out]) == 0
    result = storage.read_json(out)
    (pair,) = result["paired"]
    assert (pair["a_name"], pair["b_name"]) == ("base/eval", "ours/eval")
    assert pair["only_b"] == 2 and pair["only_a"] == 0
    with pytest.raises(StorageError, match=r"evaluation folder s3://no-such-bucket/eval: bucket 'no-such-bucket'"):
        from clad.eval.compare import load_eval_run

        load_eval_run("s3://no-such-bucket/eval")


def test_the_bucket_lock_refuses_a_writer_on_another_machine(env, tmp_path):
    """An s3:// output folder is locked by a lock object created with a conditional PUT (If-None-Match: *)."""
    import socket
    import subprocess
    import sys

    from pipelines.locking import FolderInUse, lock_folder

    uri, mp = f"s3://{BUCKET}/locked", env["mp"]
    lock = f"{uri}/.clad.lock"
    assert storage.create_exclusive(f"{uri}/probe", b"1") is True
    assert storage.create_exclusive(f"{uri}/probe", b"2") is False and storage.read_bytes(f"{uri}/probe") == b"1"
    storage.delete(f"{uri}/probe")
    with lock_folder(uri, "clad train"):
        assert storage.read_json(lock)["pid"] == os.getpid()
        mp.setenv("CLAD_CACHE_DIR", str(tmp_path / "other-machine"))  # its machine-local lock sees nothing
        try:
            with pytest.raises(FolderInUse, match=rf"{uri} is in use by pid {os.getpid()} .*aws s3 rm {lock}"):
                with lock_folder(uri, "clad train"):
                    pass
        finally:
            mp.setenv("CLAD_CACHE_DIR", str(env["driver"] / "cache"))
    assert not storage.exists(lock)  # released
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_json(lock, {"pid": int(gone.stdout), "host": socket.gethostname(), "command": "clad train"})
    with lock_folder(uri, "clad train"):  # the killed holder's stale lock on this machine is taken over
        assert storage.read_json(lock)["pid"] == os.getpid()
    storage.write_json(lock, {"pid": 1, "host": "node-7", "command": "clad train", "started": 0})
    with pytest.raises(FolderInUse, match=r"in use by pid 1 on node-7"):
        with lock_folder(uri, "clad train"):
            pass
    assert storage.read_json(lock)["host"] == "node-7"  # another machine's lock is left alone
    storage.delete(lock)


@pytest.mark.parametrize("case", ["wrong_bucket", "unknown_keys", "read_only", "no_credentials"])
def test_preflight_names_the_location_and_the_fix(env, s3, case):
    mp = env["mp"]
    loc = f"s3://{BUCKET}/out"
    storage.write_json(f"s3://{BUCKET}/published/doc.json", {})
    if case == "wrong_bucket":
        loc, expect = "s3://no-such-bucket/out", "bucket 'no-such-bucket' does not exist"
    elif case == "unknown_keys":
        _use_keys(mp, ("AKIAUNKNOWN000000000", "wrong"))
        expect = "no valid credentials"
    elif case == "read_only":
        _use_keys(mp, s3["reader"])
        expect = "permission denied to write"
    else:
        _use_keys(mp, None)
        expect = "no AWS credentials found"
    try:
        with pytest.raises(StorageError) as err:
            storage.check_writable(loc, "output_dir")
        msg = str(err.value)
        assert msg.startswith(f"output_dir {loc} is not writable:") and expect in msg, msg
        if case == "read_only":
            assert storage.read_json(f"s3://{BUCKET}/published/doc.json") == {}  # reading is allowed
    finally:
        _use_keys(mp, s3["writer"])


# ----------------------------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def ray_guarded(env):
    """A Ray instance whose workers refuse the driver's folder (tests/storage_hooks.py); the driver then
    works from that folder. Ray is restarted so its workers inherit the S3 settings above."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    violations = env["shared"] / "violations.txt"
    ray.init(num_cpus=2, object_store_memory=1 << 30, logging_level=logging.ERROR, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "storage_hooks.forbid_driver_folder",
                          "env_vars": {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
                                       "CLAD_FORBIDDEN_DIR": str(env["driver"]),
                                       "CLAD_VIOLATIONS_FILE": str(violations),
                                       "CLAD_CACHE_DIR": str(env["node_cache"])}})
    env["mp"].chdir(env["driver"])
    yield {"violations": violations}
    ray.shutdown()


@pytest.fixture(scope="module")
def tracking(env):
    from pipelines.tracking import resolve_tracking

    tracking = resolve_tracking(env["shared"] / "tracking", experiment="test-storage")  # the head's server
    tracking.activate()  # its experiment keeps artifacts in the shared folder, whichever command runs first
    return tracking


@pytest.fixture(scope="module")
def dataset(env, ray_guarded):
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    raw = env["driver"] / "raw"  # written on the driver, uploaded: the workers can read only the bucket's copy
    for i in range(2):
        write_demo_file(raw, f"task_{i}", lengths=(24, 32, 28, 20), image_size=32, seed=i)
    raw_uri = storage.upload_dir(raw, f"s3://{BUCKET}/raw")
    uri = f"s3://{BUCKET}/ds"
    first = run_preprocess(raw_uri, uri, PreprocessConfig(val_fraction=0.25))
    again = run_preprocess(raw_uri, uri, PreprocessConfig(val_fraction=0.25))
    return {"uri": uri, "raw": raw_uri, "first": first, "again": again}


def test_preprocess_into_a_bucket(dataset):
    uri = dataset["uri"]
    assert not dataset["first"].noop and dataset["again"].noop  # the manifest in the bucket makes it a no-op
    manifest = storage.read_json(f"{uri}/manifest.json")
    for split in ("train", "val"):
        shards = storage.list_files(f"{uri}/episodes/{split}", ".parquet")
        assert shards and [storage.name(s) for s in shards] == manifest["splits"][split]["shards"]
    for name in ("stats.json", "tasks.json", "language.safetensors", "config.json"):
        assert storage.is_file(f"{uri}/{name}"), name


def test_preprocess_reads_hdf5_input_from_a_bucket_through_the_node_cache(dataset, env):
    manifest = storage.read_json(f"{dataset['uri']}/manifest.json")
    assert manifest["input_dir"] == dataset["raw"]
    assert sorted(f["rel"] for f in manifest["files"]) == ["task_0_demo.hdf5", "task_1_demo.hdf5"]
    assert manifest["counts"]["episodes"]["train"] + manifest["counts"]["episodes"]["val"] == 8
    # the scan and read tasks fetched each file into their node's cache, not the driver's
    cached = sorted(p.name for p in (env["node_cache"] / "storage").glob("*/*_demo.hdf5"))
    assert cached == ["task_0_demo.hdf5", "task_1_demo.hdf5"], cached


def test_preprocess_reads_a_lerobot_dataset_from_a_bucket(env, ray_guarded):
    from clad.data.preprocess_config import PreprocessConfig
    from lerobot_fixtures import fixture_dir
    from pipelines.preprocess import run_preprocess

    src = storage.upload_dir(fixture_dir("libero_v3_video"), f"s3://{BUCKET}/lerobot_video")
    res = run_preprocess(src, f"s3://{BUCKET}/ds_lerobot", PreprocessConfig(val_fraction=0.25, image_size=32))
    m = res.manifest
    assert m["format"] == "lerobot_v3" and m["input_dir"] == src and m["image_orientation"] == "upright"
    assert m["counts"]["episodes"]["train"] > 0 and m["counts"]["rejected_demos"] == 0
    assert storage.is_file(f"s3://{BUCKET}/ds_lerobot/manifest.json")
    assert list((env["node_cache"] / "storage").glob("*/*.mp4"))  # videos were decoded from the node cache


@pytest.mark.parametrize("case", ["wrong_bucket", "missing_folder", "no_credentials"])
def test_preprocess_input_in_a_bucket_fails_before_any_work(env, s3, case):
    from clad.data.preprocess_config import PreprocessConfig
    from clad.errors import CladError
    from pipelines.preprocess import run_preprocess

    src, expect = f"s3://{BUCKET}/raw", ""
    if case == "wrong_bucket":
        src, expect = "s3://no-such-bucket/raw", "bucket 'no-such-bucket' does not exist"
    elif case == "missing_folder":
        src, expect = f"s3://{BUCKET}/nothing-here", "does not exist; check the location"
    else:
        _use_keys(env["mp"], None)
        expect = "no AWS credentials found"
    out = f"s3://{BUCKET}/ds-{case}"
    try:
        with pytest.raises(CladError) as err:
            run_preprocess(src, env["shared"] / f"ds-{case}" if case == "no_credentials" else out,
                           PreprocessConfig(val_fraction=0.25))
    finally:
        _use_keys(env["mp"], s3["writer"])
    msg = str(err.value)
    assert msg.startswith(f"--input {src}") and expect in msg, msg
    assert storage.list_files(out, recursive=True) == []


def _train_cfg(dataset_uri: str, *overrides: str):
    from clad.training.config import load_train_config

    return load_train_config(None, [
        f"dataset_dir={dataset_uri}", f"output_dir=s3://{BUCKET}/runs", "model_preset=tiny", "batch_size=8",
        "log_every=1", "checkpoint_every=2", "validate_every=2", "val_batches=1", "optim.warmup_steps=1",
        "steps=4", *overrides])


@pytest.fixture(scope="module")
def trained(dataset, tracking):
    """stage 1 stopped at step 2 (the interruption), re-run to resume to 4; then 2 steps of stage 2 from the
    stage-1 model in the bucket."""
    from pipelines.train import run_training

    first = run_training(_train_cfg(dataset["uri"], "stop_at_step=2"), tracking=tracking)
    second = run_training(_train_cfg(dataset["uri"]), tracking=tracking)
    stage2 = run_training(_train_cfg(dataset["uri"], "stage=stage2", "steps=2",
                                     f"stage1_checkpoint=s3://{BUCKET}/runs/stage1"), tracking=tracking)
    return {"first": first, "second": second, "stage2": stage2}


def test_train_checkpoints_land_in_the_bucket_and_resume(trained):
    first, second, stage2 = trained["first"], trained["second"], trained["stage2"]
    assert first.error is None and second.error is None and stage2.error is None
    assert first.checkpoint.path.startswith(f"{BUCKET}/runs/stage1/checkpoint_")  # a bucket key, not a local path
    states = [storage.read_json(f) for f in storage.list_files(f"s3://{BUCKET}/runs/stage1", "training_state.json",
                                                               recursive=True)]
    assert sorted(s["step"] for s in states) == [2, 4]  # the re-run resumed from step 2 in the bucket
    for stage in ("stage1", "stage2"):
        assert storage.is_file(f"s3://{BUCKET}/runs/{stage}/final/model.safetensors")
        assert storage.is_file(f"s3://{BUCKET}/runs/{stage}/train_config.json")


def test_evaluate_a_checkpoint_in_the_bucket(trained, tracking, env):
    from clad.eval.config import EvalConfig
    from clad.eval.policy import PolicySpec
    from pipelines.evaluate import run_evaluation

    cfg = EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1, max_steps=10, settle_steps=1,
                     camera_size=64, actors=1, video_episodes=1,
                     policy=PolicySpec(kind="clad", checkpoint=f"s3://{BUCKET}/runs/stage2/final"))
    out = f"s3://{BUCKET}/eval"
    report = run_evaluation(cfg, out, tracking_uri=tracking.uri, experiment="test-storage", progress=False)
    assert report.summary["complete"] and report.episodes_run == 1
    summary = storage.read_json(f"{out}/summary.json")
    assert summary["summary"]["overall"]["n"] == 1
    assert len(storage.read_text(f"{out}/episodes.jsonl").splitlines()) == 1
    assert storage.list_files(f"{out}/videos", ".mp4")
    # the env actor loaded the checkpoint into its node's cache (not the driver's)
    node_cache = [p.name for p in (env["node_cache"] / "storage").iterdir()]
    assert any(n.startswith("final-") for n in node_cache), node_cache
    # resuming from the bucket runs nothing again
    again = run_evaluation(cfg, out, tracking_uri=tracking.uri, experiment="test-storage", progress=False)
    assert again.episodes_run == 0 and again.summary["summary"]["overall"]["n"] == 1


@pytest.fixture(scope="module")
def feature_set(trained, dataset):
    """`clad features` with the stage-1 model in the bucket, writing its feature set into the bucket."""
    from clad.model.frozen_encoder import EncoderSpec
    from pipelines.features import extract_features

    root = f"s3://{BUCKET}/features/s1"
    res = extract_features(dataset["uri"], EncoderSpec(source="stage1", checkpoint=f"s3://{BUCKET}/runs/stage1"), root)
    return {"root": root, "res": res}


def test_features_are_extracted_into_the_bucket(feature_set, dataset):
    root, res = feature_set["root"], feature_set["res"]
    meta = storage.read_json(f"{root}/feature_set.json")
    manifest = storage.read_json(f"{dataset['uri']}/manifest.json")
    assert meta["complete"] and meta["dataset_dir"] == dataset["uri"] and res["root"] == root
    shards = storage.list_files(root, ".npz", recursive=True)
    assert len(shards) == sum(manifest["counts"]["episodes"].values()) == res["encoded"]


@pytest.mark.parametrize("source", ["memory", "stream"])
def test_stage2_trains_from_a_feature_set_in_the_bucket(feature_set, dataset, tracking, env, source):
    from pipelines.train import run_training

    cfg = _train_cfg(dataset["uri"], "stage=stage2", "steps=2", f"stage1_checkpoint=s3://{BUCKET}/runs/stage1",
                     f"loader.feature_set={feature_set['root']}", f"loader.source={source}",
                     f"run_name=s2-features-{source}")
    result = run_training(cfg, tracking=tracking)
    assert result.error is None
    assert storage.is_file(f"s3://{BUCKET}/runs/s2-features-{source}/final/model.safetensors")
    # the workers read the feature set from their node's cache
    assert list((env["node_cache"] / "storage").glob("s1-*/train/*.npz"))


def test_features_of_a_dataset_in_a_missing_bucket_fail_before_any_work(env):
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["features", "s3://no-such-bucket/ds", "--stage1", f"s3://{BUCKET}/runs/stage1",
                                      "--out", f"s3://{BUCKET}/features/never"])
    with pytest.raises(StorageError, match=r"DATASET s3://no-such-bucket/ds: bucket 'no-such-bucket' does not exist"):
        args.func(args)
    assert storage.list_files(f"s3://{BUCKET}/features/never", recursive=True) == []


def test_a_pipeline_caches_features_in_a_bucket_output_dir(env):
    from pipelines.pipeline import load_pipeline_config

    cfg = load_pipeline_config("quickstart", [f"output_dir=s3://{BUCKET}/pipe-features", "cache_features=true"])
    s2 = cfg.stage_config("stage2", f"s3://{BUCKET}/pipe-features/dataset", f"s3://{BUCKET}/pipe-features/train")
    assert s2.stage1_checkpoint.startswith(f"s3://{BUCKET}/pipe-features/train/stage1")


@pytest.mark.libero
def test_demos_into_a_bucket_upload_finished_files_and_resume(env, ray_guarded):
    """`clad demos --out s3://...`: recorded on the actor's disk, each finished file uploaded whole."""
    from clad.data.libero_layout import demo_file_name
    from clad.libero.suites import get_task
    from pipelines.demos import run_demos

    out = f"s3://{BUCKET}/demos/libero_object"
    kw = dict(actors=1, image_size=64, max_attempts=3, screen=False, progress=False)
    (rep,) = run_demos("libero_object", ["0"], 1, out, **kw)
    final = f"{out}/{demo_file_name(get_task('libero_object', 0).name)}"
    assert rep["demos"] == 1 and rep["file"] == final and storage.is_file(final)
    assert storage.read_json(f"{out}/expert_report.json")[0]["demos"] == 1
    assert not [p for p in (env["node_cache"] / "work").rglob("*.hdf5")]  # the local recording was removed
    mtime = storage.stat(final)[1]
    (again,) = run_demos("libero_object", ["0"], 1, out, **kw)
    assert again["skipped"] and storage.stat(final)[1] == mtime  # the uploaded file is trusted, not redone


def test_a_tiny_sweep_keeps_trials_and_results_in_the_bucket(dataset, tracking, env, tmp_path):
    """`clad tune` with output_dir in the bucket: Tune's storage_path, every trial's run folder, results.csv
    and best_config.yaml live there."""
    import csv
    import io

    import yaml

    from pipelines.cli import main as clad_main

    base, space = tmp_path / "base.yaml", tmp_path / "space.yaml"
    base.write_text(yaml.safe_dump({
        "dataset_dir": dataset["uri"], "output_dir": f"s3://{BUCKET}/sweeps", "model_preset": "tiny", "steps": 2,
        "batch_size": 8, "validate_every": 1, "checkpoint_every": 2, "val_batches": 1, "optim": {"warmup_steps": 1},
        "mlflow_experiment": "test-storage"}))  # the experiment of the `tracking` server, artifacts outside the driver
    space.write_text(yaml.safe_dump({
        "name": "tiny", "num_samples": 2, "resources_per_trial": {"num_workers": 1, "cpus_per_worker": 0.45},
        # fifo: ASHA may stop the second trial at step 1 when the trials run one after the other (a loaded machine),
        # and a stopped trial has no final model; what is tested here is where the files go, not the scheduler
        "scheduler": {"type": "fifo"},
        "space": {"model.dynamics.tau": {"choice": [2, 3]}}}))
    assert clad_main(["tune", "--space", str(space), "--config", str(base), "--tracking-uri", tracking.uri]) == 0
    sweep = f"s3://{BUCKET}/sweeps/tiny"
    rows = list(csv.DictReader(io.StringIO(storage.read_text(f"{sweep}/results.csv"))))
    assert len(rows) == 2 and all(float(r["objective"]) > 0 for r in rows)
    assert storage.is_file(f"{sweep}/best_config.yaml")
    finals = storage.list_files(f"{sweep}/trials", "final/model.safetensors", recursive=True)
    assert len(finals) == 2, finals  # each trial's model in the bucket
    assert storage.list_files(f"{sweep}/tune", recursive=True)  # Tune's experiment state (for a resume)


def test_workers_never_touched_the_drivers_folder(trained, ray_guarded):
    # runs after the pipeline tests above (module order): every Ray task, Train worker and env actor worked
    # from URIs; any read of the driver's folder would have been refused and recorded
    v = ray_guarded["violations"]
    assert not v.exists() or not v.read_text().strip(), v.read_text()


def test_training_into_a_missing_bucket_fails_before_any_work(dataset, tracking):
    from pipelines.train import run_training

    cfg = _train_cfg(dataset["uri"]).replace(output_dir="s3://no-such-bucket/runs")
    with pytest.raises(StorageError, match=r"output_dir s3://no-such-bucket/runs/stage1 is not writable: "
                                           r"bucket 'no-such-bucket' does not exist"):
        run_training(cfg, tracking=tracking)


def test_preprocess_with_a_read_only_role_fails_before_ray_work(env, s3, dataset):
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    _use_keys(env["mp"], s3["reader"])
    try:
        with pytest.raises(StorageError, match=rf"--out s3://{BUCKET}/ds-ro is not writable: permission denied"):
            run_preprocess(env["shared"] / "raw", f"s3://{BUCKET}/ds-ro", PreprocessConfig(val_fraction=0.25))
    finally:
        _use_keys(env["mp"], s3["writer"])
    assert storage.list_files(f"s3://{BUCKET}/ds-ro", recursive=True) == []


def test_eval_of_a_missing_checkpoint_names_it(env, ray_guarded):
    from clad.eval.config import EvalConfig
    from clad.eval.policy import PolicySpec
    from pipelines.evaluate import run_evaluation

    cfg = EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1,
                     policy=PolicySpec(kind="clad", checkpoint=f"s3://{BUCKET}/runs/nothing/final"))
    with pytest.raises(StorageError, match=rf"--checkpoint s3://{BUCKET}/runs/nothing/final: does not exist"):
        run_evaluation(cfg, f"s3://{BUCKET}/eval-x", use_mlflow=False, progress=False)


def test_the_guard_refuses_the_drivers_folder_in_workers(env, ray_guarded):
    """The check above means something: a worker handed a driver-local path is refused and recorded."""
    import ray

    secret = env["driver"] / "only-here.json"
    secret.write_text("{}")

    @ray.remote(num_cpus=0.1)
    def read(loc: str):
        from clad import storage as worker_storage

        try:
            worker_storage.read_json(loc)
        except PermissionError as err:
            return str(err)
        return "read"

    @ray.remote(num_cpus=0.1)
    def python_open(loc: str):
        try:
            open(loc).read()
        except PermissionError as err:
            return str(err)
        return "read"

    assert "driver's machine only" in ray.get(read.remote(str(secret)))
    assert "driver's machine only" in ray.get(python_open.remote(str(secret)))
    assert str(secret) in ray_guarded["violations"].read_text()


def test_pipeline_places_every_step_in_the_bucket_and_skips_finished_stages(env):
    from clad.errors import CladError
    from pipelines.pipeline import _stage_done, check_pipeline_inputs, load_pipeline_config

    cfg = load_pipeline_config("quickstart", [f"output_dir=s3://{BUCKET}/pipe/"])
    assert check_pipeline_inputs(cfg) == f"s3://{BUCKET}/pipe"  # scripted demos are uploaded there
    bad = load_pipeline_config("quickstart", [f"output_dir=s3://{BUCKET}/pipe/", "input_dir=s3://no-such-bucket/raw"])
    with pytest.raises(CladError, match=r"input_dir s3://no-such-bucket/raw: bucket 'no-such-bucket' does not exist"):
        check_pipeline_inputs(bad)
    runs = storage.join(cfg.location, "train")
    s1 = cfg.stage_config("stage1", storage.join(cfg.location, "dataset"), runs)
    assert s1.dataset_dir == f"s3://{BUCKET}/pipe/dataset" and s1.run_location.startswith(f"{runs}/stage1-")
    s2 = cfg.stage_config("stage2", s1.dataset_dir, runs, s1.run_location)
    assert s2.stage1_checkpoint == s1.run_location
    assert not _stage_done(s1)
    storage.write_json(storage.join(s1.run_location, "train_config.json"), s1.to_dict())
    assert not _stage_done(s1)  # no weights yet: an interrupted upload of final/ is not a finished stage
    storage.write_bytes(storage.join(s1.run_location, "final", "model.safetensors"), b"weights")
    assert _stage_done(s1)


def test_a_checkpoint_of_a_bucket_dataset_records_its_identity_and_task_table(env, tmp_path):
    """Training reads a dataset in a bucket; the checkpoint must still record the dataset's fingerprint and
    instruction table (a local-Path check silently skipped both, so evaluation fell back to the benchmark's
    strings and the identity checks had nothing to compare)."""
    from clad.model.checkpoint import dataset_identity
    from clad.model.task_table import read_task_table, write_task_table

    uri = f"s3://{BUCKET}/identity_ds"
    tasks = [{"name": "pick_bowl", "instruction": "pick up the bowl", "demos": 3}]
    storage.write_json(f"{uri}/manifest.json", {"fingerprint": "f" * 64, "tasks": tasks})
    storage.write_json(f"{uri}/tasks.json", {"tasks": tasks})
    assert dataset_identity(uri) == {"dataset_fingerprint": "f" * 64, "instructions": '["pick up the bowl"]'}
    write_task_table(tmp_path, uri)
    table = read_task_table(tmp_path)
    assert [r["instruction"] for r in table.rows] == ["pick up the bowl"]
    assert json.loads((tmp_path / "tasks.json").read_text())["dataset"] == uri


def test_closed_loop_preflight_reads_the_task_table_of_a_bucket_dataset(env, tmp_path):
    """Evaluation during training needs a local output_dir but may read its dataset from a bucket: the check
    that the rolled-out tasks are in the dataset must read the bucket's tasks.json, not skip it."""
    from clad.errors import ConfigError
    from clad.training.config import load_train_config
    from pipelines.eval_during_training import preflight

    uri = f"s3://{BUCKET}/preflight_ds"
    storage.write_json(f"{uri}/tasks.json", {"tasks": [
        {"name": "pick_up_the_alphabet_soup_and_place_it_in_the_basket", "instruction": "x"}]})
    cfg = load_train_config(None, [f"dataset_dir={uri}", f"output_dir={tmp_path}", "stage=stage2",
                                   "model.policy.foresight=none", "model_preset=tiny", "checkpoint_every=2",
                                   "eval_every=2", "closed_loop.suite=libero_object", "closed_loop.tasks=['0','1']"])
    with pytest.raises(ConfigError, match=r"closed_loop.tasks: .*cream_cheese.* are not in the dataset"):
        preflight(cfg, train_cpus=1)
