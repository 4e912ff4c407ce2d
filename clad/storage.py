"""One small filesystem layer for every location a user gives: a local path or an object-storage URI.

    loc = "s3://my-bucket/runs/libero10"          # or gs://..., or /mnt/efs/runs, or runs/ (local)
    check_writable(loc, "output_dir")             # before any work: names the location and the fix
    write_json(join(loc, "summary.json"), doc)    # atomic: temp + rename locally, one complete PUT remotely
    local = local_copy(join(loc, "stage2/final")) # a per-node cached copy of a remote folder (checkpoints)

URIs are resolved by `pyarrow.fs.FileSystem.from_uri` (s3://, gs://, hdfs://, abfs://, ...), so credentials
and endpoints come from the standard places: an instance role / service account on a cloud node, or the
AWS / Google environment variables (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an S3-compatible
server such as MinIO). Nothing here imports Ray; Ray tasks receive locations as strings and call these
functions where they run, so no worker ever depends on a path that only exists on the driver.

Atomicity: a local write goes to a temp file that is renamed over the target; an object-store write goes to a
hidden temporary key that is then moved (copied server-side) onto the target, so the target appears whole or
not at all, even when the upload is interrupted. Readers that decide whether work is finished
(manifest.json, summary.json, final/model.safetensors) can therefore trust any object they see whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

from clad.errors import CladError

__all__ = ["StorageError", "is_remote", "normalize", "join", "name", "parent", "filesystem", "exists", "is_file",
           "is_dir", "list_files", "read_bytes", "read_text", "read_json", "write_bytes", "write_text",
           "write_json", "open_input", "delete", "makedirs", "upload_dir", "upload_file", "download_dir", "local_copy",
           "stat", "relative", "cache_root", "check_readable", "check_writable", "create_exclusive", "lock_file",
           "WorkingCopy"]

CACHE_ENV = "CLAD_CACHE_DIR"  # where remote checkpoints are cached on each node (default ~/.cache/clad)


class StorageError(CladError, OSError):
    """A location cannot be read or written: wrong bucket, missing credentials, no permission, read-only.

    `transient` marks failures that may pass on a retry (endpoint unreachable, timeouts, an unexplained server
    error): inside a training worker those are worth Ray Train's restart, unlike a wrong bucket or a denied
    permission (pipelines/failure_policy.py)."""

    def __init__(self, message: str, fix: str = "", transient: bool = False):
        super().__init__(message)
        self.fix = fix or message
        self.transient = transient

    def __str__(self) -> str:
        return self.args[0]


# ------------------------------------------------------------------------------------------------ locations

def is_remote(loc: str | os.PathLike) -> bool:
    """True for an object-storage (or any non-local) URI such as s3://bucket/key."""
    s = str(loc)
    return "://" in s and not s.startswith("file://")


def normalize(loc: str | os.PathLike) -> str:
    """A URI without trailing slash, or an absolute local path (so it means the same in every process)."""
    s = str(loc)
    if is_remote(s):
        scheme, rest = s.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}"
    if s.startswith("file://"):
        s = s[len("file://"):]
    return str(Path(s).expanduser().resolve())


def join(loc: str | os.PathLike, *parts: str) -> str:
    s = str(loc)
    if is_remote(s):
        return "/".join([s.rstrip("/"), *(str(p).strip("/") for p in parts)])
    return str(Path(s, *parts))


def name(loc: str | os.PathLike) -> str:
    return str(loc).rstrip("/").rsplit("/", 1)[-1]


def parent(loc: str | os.PathLike) -> str:
    s = str(loc)
    if is_remote(s):
        return s.rstrip("/").rsplit("/", 1)[0]
    return str(Path(s).parent)


# settings that change how a bucket is reached: a cached filesystem is reused only while they are unchanged
_FS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
           "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS")


@functools.lru_cache(maxsize=32)
def _bucket_filesystem(bucket_uri: str, settings: tuple):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(bucket_uri)[0]


def filesystem(loc: str | os.PathLike):
    """(pyarrow FileSystem, path inside it) for a location.

    For s3:// and gs:// one filesystem per bucket is cached: building one resolves credentials (an instance
    metadata call on a cloud node) and the bucket's region, which would otherwise happen on every read."""
    import pyarrow.fs as pafs

    s = str(loc)
    if not is_remote(s):
        return pafs.LocalFileSystem(), normalize(s)
    scheme, rest = s.split("://", 1)
    try:
        if scheme in ("s3", "gs", "gcs"):
            bucket = rest.split("/", 1)[0]
            fs = _bucket_filesystem(f"{scheme}://{bucket}", tuple(os.environ.get(k) for k in _FS_ENV))
            return fs, rest.rstrip("/")
        return pafs.FileSystem.from_uri(s)
    except (OSError, ValueError) as err:
        raise _explain(err, s, "open") from None


# ------------------------------------------------------------------------------------------------ queries

def _info(loc: str):
    fs, path = filesystem(loc)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise _explain(err, loc, "read") from None


def exists(loc: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(str(loc)).type != pafs.FileType.NotFound


def is_file(loc: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(str(loc)).type == pafs.FileType.File


def is_dir(loc: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(str(loc)).type == pafs.FileType.Directory


def _walk(loc: str, recursive: bool):
    import pyarrow.fs as pafs

    fs, path = filesystem(loc)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except OSError as err:
        raise _explain(err, loc, "list") from None
    return [i for i in infos if i.type == pafs.FileType.File], path


def list_files(loc: str | os.PathLike, suffix: str = "", recursive: bool = False) -> list[str]:
    """Sorted locations of the files in folder `loc` ending with `suffix` ([] when the folder is missing)."""
    loc = str(loc)
    files, root = _walk(loc, recursive)
    rels = sorted(i.path[len(root):].lstrip("/") for i in files if i.path.endswith(suffix))
    return [join(loc, r) for r in rels if not name(r).startswith(".")]


# ------------------------------------------------------------------------------------------------ bytes

def read_bytes(loc: str | os.PathLike) -> bytes:
    fs, path = filesystem(loc)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _explain(err, str(loc), "read") from None


def read_text(loc: str | os.PathLike) -> str:
    return read_bytes(loc).decode("utf-8")


def read_json(loc: str | os.PathLike) -> Any:
    return json.loads(read_text(loc))


def open_input(loc: str | os.PathLike):
    """A seekable pyarrow file (for pyarrow.parquet.ParquetFile); local paths open directly."""
    fs, path = filesystem(loc)
    try:
        return fs.open_input_file(path)
    except OSError as err:
        raise _explain(err, str(loc), "read") from None


def write_bytes(loc: str | os.PathLike, data: bytes) -> str:
    """Write `data` as the whole content of `loc`, atomically (see the module docstring)."""
    s = str(loc)
    if not is_remote(s):
        path = Path(normalize(s))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return str(path)
    _put(s, lambda out: out.write(data))
    return s


def _put(loc: str, write) -> None:
    """One complete object at `loc`, never half of one. pyarrow completes a multipart upload when its stream is
    closed, also when closed by an exception or Ctrl-C (tested against moto: the half object appears), and
    offers no abort. So the bytes go to a hidden temporary key beside the target (`.<name>.part-<id>`, which
    `list_files` skips) and are then moved onto it: the move is a server-side copy that publishes the whole
    object or nothing. (S3 copies a single object of at most 5 GB this way.)"""
    fs, path = filesystem(loc)
    tmp = f"{parent(path)}/.{name(path)}.part-{uuid.uuid4().hex[:12]}"
    try:
        try:
            with fs.open_output_stream(tmp) as out:
                write(out)
            fs.move(tmp, path)
        except BaseException:
            try:
                fs.delete_file(tmp)
            except Exception:
                pass  # a leftover hidden .part object is garbage no reader trusts
            raise
    except OSError as err:
        raise _explain(err, loc, "write") from None


def write_text(loc: str | os.PathLike, text: str) -> str:
    return write_bytes(loc, text.encode("utf-8"))


def write_json(loc: str | os.PathLike, doc: Any, **dumps: Any) -> str:
    dumps.setdefault("indent", 2)
    return write_text(loc, json.dumps(doc, **dumps) + "\n")


def makedirs(loc: str | os.PathLike) -> None:
    """Create a local folder; object stores have no folders, so nothing to do there."""
    if not is_remote(loc):
        Path(normalize(loc)).mkdir(parents=True, exist_ok=True)


def delete(loc: str | os.PathLike, missing_ok: bool = True) -> None:
    """Remove a file or a whole folder."""
    import pyarrow.fs as pafs

    fs, path = filesystem(loc)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif not missing_ok:
            raise FileNotFoundError(str(loc))
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError as err:
        raise _explain(err, str(loc), "delete") from None


# ------------------------------------------------------------------------------------------------ folders

def upload_dir(local_dir: str | Path, loc: str | os.PathLike, last: Iterable[str] = ()) -> str:
    """Copy every file under `local_dir` to `loc`. Files named in `last` (relative names) are written after
    all others, so a reader that checks for them never sees a half-copied folder."""
    local_dir = Path(local_dir)
    last = list(last)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    order = [p for p in files if p.relative_to(local_dir).as_posix() not in last]
    order += [local_dir / n for n in last if (local_dir / n).is_file()]
    for p in order:
        upload_file(p, join(loc, p.relative_to(local_dir).as_posix()))
    return str(loc)


def upload_file(local: str | Path, loc: str | os.PathLike) -> str:
    """Copy one local file to `loc` without holding it in memory, atomically like `write_bytes`: a temp file
    renamed locally, one object made visible only when its upload completes in a bucket, so an interrupted
    upload never leaves a half file that a later run would trust."""
    s = str(loc)
    if not is_remote(s):
        path = Path(normalize(s))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:6]}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)
        return str(path)
    with open(local, "rb") as src:
        _put(s, lambda out: shutil.copyfileobj(src, out, length=8 << 20))
    return s


def download_dir(loc: str | os.PathLike, local_dir: str | Path) -> Path:
    local_dir = Path(local_dir)
    loc = str(loc)
    files, root = _walk(loc, recursive=True)
    for info in files:
        _download(loc, info.path, local_dir / info.path[len(root):].lstrip("/"))
    return local_dir


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clad").expanduser() / "storage"


def local_copy(loc: str | os.PathLike) -> Path:
    """A local path with the content of `loc` (a folder or one file): the path itself when local, otherwise a
    copy cached on this node under `cache_root()`, keyed by the URI and the size and modification time of
    every file, so the tasks and actors of one node download a checkpoint, a feature set or an input file
    once, and a rewritten one is fetched again. A file keeps its name (`<cache>/<name>-<hash>/<name>`):
    readers such as the LIBERO file reader take the task name from it."""
    import pyarrow.fs as pafs

    s = str(loc)
    if not is_remote(s):
        return Path(normalize(s))
    info = _info(s)
    single = info.type == pafs.FileType.File
    files, root = ([info], parent(info.path)) if single else _walk(s, recursive=True)
    if not files:
        raise StorageError(f"{s} does not exist or holds no files: check the location (bucket and prefix)",
                           f"{s} does not exist or holds no files: check the location (bucket and prefix)")
    h = hashlib.sha256(normalize(s).encode())
    for i in sorted(files, key=lambda i: i.path):
        h.update(f"\0{i.path}\0{i.size}\0{i.mtime_ns}".encode())
    target = cache_root() / f"{name(s)}-{h.hexdigest()[:16]}"
    result = target / name(s) if single else target
    if target.is_dir():
        return result
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if single:
            _download(s, info.path, tmp / name(s))
        else:
            download_dir(s, tmp)
        try:
            os.rename(tmp, target)  # atomic: concurrent tasks on one node either win or find it complete
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _download(loc: str, path: str, dst: Path) -> None:
    fs, _ = filesystem(loc)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs.open_input_stream(path) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, length=8 << 20)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _explain(err, loc, "read") from None


def stat(loc: str | os.PathLike) -> tuple[int, float]:
    """(size in bytes, modification time in POSIX seconds) of one file."""
    info = _info(str(loc))
    if info.type.name != "File":
        raise FileNotFoundError(str(loc))
    return int(info.size), (info.mtime_ns or 0) / 1e9


def relative(loc: str | os.PathLike, root: str | os.PathLike) -> str:
    """`loc` relative to folder `root`, with forward slashes (both local, or both URIs)."""
    if is_remote(root):
        r, s = normalize(root), str(loc)
        if not s.startswith(r + "/"):
            raise ValueError(f"{s} is not under {r}")
        return s[len(r) + 1:]
    return Path(normalize(loc)).relative_to(normalize(root)).as_posix()


# ------------------------------------------------------------------------------------------------ pre-flight

def check_readable(loc: str | os.PathLike, what: str, expect: str = "") -> str:
    """Raise StorageError naming `what` (e.g. "--checkpoint") and the fix when `loc` cannot be read or does
    not exist. `expect` names a file that must be inside it (e.g. "model.safetensors"). Returns `loc`."""
    s = str(loc)
    target = join(s, expect) if expect else s
    try:
        found = exists(target)
    except StorageError as err:
        raise StorageError(f"{what} {s}: {err.fix}", err.fix) from None
    if not found:
        bucket = _missing_bucket(s)
        if bucket:
            fix = (f"bucket '{bucket}' does not exist or is in another account: fix the URI (or create the bucket "
                   f"and upload the data)")
            raise StorageError(f"{what} {s}: {fix}", fix)
        where = f"{target} does not exist" if expect else "does not exist"
        raise StorageError(f"{what} {s}: {where}; check the location (and, for a URI, the bucket and prefix)")
    return s


def _missing_bucket(loc: str) -> str:
    """The bucket name of an s3:// / gs:// location whose bucket does not exist, else "" (pyarrow reports a
    key in a missing bucket as merely not found)."""
    if not is_remote(loc) or loc.split("://", 1)[0] not in ("s3", "gs", "gcs"):
        return ""
    import pyarrow.fs as pafs

    bucket = loc.split("://", 1)[1].split("/", 1)[0]
    try:
        return bucket if _info(f"{loc.split('://', 1)[0]}://{bucket}").type == pafs.FileType.NotFound else ""
    except StorageError:
        return ""


def check_writable(loc: str | os.PathLike, what: str) -> str:
    """Write and delete a small probe object under `loc`; raise StorageError naming `what`, the location
    and the fix when that fails. Runs on the driver before any work starts. Returns `loc`."""
    s = str(loc)
    probe = join(s, f".clad-write-check-{uuid.uuid4().hex[:12]}")
    try:
        if not is_remote(s):
            makedirs(s)
        write_bytes(probe, b"ok")
        delete(probe)
    except OSError as err:  # StorageError included
        fix = err.fix if isinstance(err, StorageError) else _explain(err, s, "write").fix
        raise StorageError(f"{what} {s} is not writable: {fix}", fix) from None
    return s


def _explain(err: BaseException, loc: str, action: str) -> StorageError:
    """Turn a pyarrow / OS error into a message with the fix."""
    import errno

    text = str(err)
    low = text.lower()
    bucket = loc.split("://", 1)[1].split("/", 1)[0] if is_remote(loc) else ""
    transient = False
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low or "bucket not found" in low:
        fix = (f"bucket '{bucket}' does not exist or is in another account: create it (e.g. `aws s3 mb s3://{bucket}`) "
               "or fix the URI")
    elif any(k in low for k in ("invalidaccesskeyid", "signaturedoesnotmatch", "no credentials",
                                "unable to locate credentials", "invalid_access_key", "invalidclienttokenid",
                                "missing authentication", "expiredtoken")):
        fix = ("no valid credentials: on a cluster give the nodes an instance role (AWS) or service account (GCP) "
               "with access to the bucket; locally set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
               "or GOOGLE_APPLICATION_CREDENTIALS")
    elif "access_denied" in low or "accessdenied" in low or "access denied" in low or "forbidden" in low \
            or isinstance(err, PermissionError):
        fix = (f"permission denied to {action}: grant the instance role / service account (or the local user) "
               f"{action} access to this location, or choose another one")
    elif getattr(err, "errno", None) == errno.EROFS or "read-only" in low:
        fix = "the location is read-only: choose a writable location"
    elif "connect" in low or "curl" in low or "endpoint" in low or "timeout" in low:
        fix = ("the storage endpoint cannot be reached: check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and the "
               "network")
        transient = True
    elif is_remote(loc) and loc.startswith("s3://") and not _aws_credentials_visible():
        fix = ("no AWS credentials found: on a cluster give the nodes an instance role with access to the bucket; "
               "locally set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    else:
        fix = f"cannot {action} it ({text.splitlines()[0] if text else type(err).__name__})"
        transient = True  # e.g. a 503 SlowDown or an internal error of the store
    return StorageError(f"{loc}: {fix}", fix, transient=transient)


def _aws_credentials_visible() -> bool:
    """Whether any source of the AWS default credential chain is configured (anonymous requests otherwise)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE") \
            or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    if Path(env.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials")).expanduser().is_file():
        return True
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true"  # an instance role may answer


def create_exclusive(loc: str, data: bytes) -> bool | None:
    """Create object `loc` only if it does not exist (S3's conditional PUT, `If-None-Match: *`): True when this
    call created it, False when it already existed. None when the location's store offers no such write here
    (only s3:// is implemented, through boto3, which reads the same AWS variables and instance role as
    pyarrow; pyarrow itself exposes no conditional write)."""
    if not str(loc).startswith("s3://"):
        return None
    try:
        import boto3  # noqa: F401  (the client is built in _s3_client)
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return None
    bucket, key = str(loc)[len("s3://"):].split("/", 1)
    try:
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or \
                err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            return False
        raise _explain(err, str(loc), "write") from None
    except BotoCoreError as err:
        raise _explain(err, str(loc), "write") from None


def _s3_client():
    import boto3

    # the endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), region and credentials come from the environment
    return boto3.session.Session().client("s3")


def lock_file(loc: str | os.PathLike, lock_name: str) -> str:
    """Where to put a lock file guarding `loc`: inside it when local; object stores have no locks, so for a
    URI a file in this machine's cache (it guards against a second writer on the same machine only)."""
    if not is_remote(loc):
        return join(normalize(loc), lock_name)
    d = cache_root() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return str(d / f"{hashlib.sha256(normalize(loc).encode()).hexdigest()[:16]}-{lock_name.lstrip('.')}")


class WorkingCopy:
    """A local working folder for outputs that live at a URI and grow while a job runs (evaluation logs).

    Appending to an object is impossible, so files are written locally and uploaded whole: `pull()` (done on
    creation) fetches what an earlier run uploaded, `push()` uploads files, each as one complete object.
    A local file larger than its uploaded version (a run on this machine that stopped before its upload)
    is kept, since append-only logs only grow. Local-only bookkeeping (`mlflow/`, `mlflow_run.json`) stays.
    """

    LOCAL_ONLY = ("mlflow/", "mlflow_run.json")

    def __init__(self, loc: str, throttle_s: float = 10.0):
        self.loc = normalize(loc)
        digest = hashlib.sha256(self.loc.encode()).hexdigest()[:16]
        self.local = cache_root().parent / "work" / f"{name(self.loc)}-{digest}"
        self.local.mkdir(parents=True, exist_ok=True)
        self.throttle_s = throttle_s
        self._last_push = 0.0
        self.pull()

    def pull(self) -> None:
        files, root = _walk(self.loc, recursive=True)
        fs, _ = filesystem(self.loc)
        for info in files:
            rel = info.path[len(root):].lstrip("/")
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # lock objects, interrupted uploads' temporary keys
            dst = self.local / rel
            if dst.is_file() and dst.stat().st_size >= info.size:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.part")
            with fs.open_input_stream(info.path) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, length=8 << 20)
            os.replace(tmp, dst)

    def push(self, names: Iterable[str] | None = None, last: Iterable[str] = ()) -> None:
        """Upload `names` (relative; default every file), the ones in `last` after all others."""
        import time

        last = list(last)
        if names is None:
            names = [p.relative_to(self.local).as_posix() for p in sorted(self.local.rglob("*")) if p.is_file()]
        names = [n for n in names if not n.startswith(self.LOCAL_ONLY) and not name(n).startswith(".")]
        for n in [n for n in names if n not in last] + [n for n in last if (self.local / n).is_file()]:
            if (self.local / n).is_file():
                write_bytes(join(self.loc, n), (self.local / n).read_bytes())
        self._last_push = time.monotonic()

    def push_throttled(self, names: Iterable[str]) -> bool:
        import time

        if time.monotonic() - self._last_push < self.throttle_s:
            return False
        self.push(list(names))
        return True
