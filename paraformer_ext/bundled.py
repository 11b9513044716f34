"""Files shipped inside the package (the fsmn-vad weights, the default ASR model), checked against pinned
sha256 sums before use, so a damaged or partial installation fails with a clear message instead of loading
garbage."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(folder: Path, sums: dict[str, str], what: str, error: type[Exception], alternative: str) -> Path:
    """folder, after checking that every file of `sums` (name -> sha256) is there with its sum.
    what: the thing's name for messages; alternative: what the user can pass instead."""
    for name, sha in sums.items():
        path = folder / name
        if not path.is_file():
            raise error(f"the packaged {what} file {path} is missing: the paraformer_ext installation is incomplete; "
                        f"reinstall it (`pip install --force-reinstall paraformer_ext`), or {alternative}")
        got = sha256_file(path)
        if got != sha:
            raise error(f"the packaged {what} file {path} has sha256 {got}, expected {sha}: it was changed or "
                        f"damaged; reinstall paraformer_ext, or {alternative}")
    return folder


def read_sums(path: Path) -> dict[str, str]:
    """A `sha256sum`-format file ("HASH  NAME" per line) as name -> hash."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            sha, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = sha
    return out


def write_sums(folder: Path) -> Path:
    """folder/SHA256SUMS (the format read_sums reads) for every file below folder, by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    out = folder / "SHA256SUMS"
    out.write_text("".join(f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files), encoding="utf-8")
    return out
