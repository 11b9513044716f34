"""paths.cache_dir: the one cache location, used by int8 models and the demo (the VAD weights ship in the package)."""

from paraformer_ext.paths import cache_dir
from paraformer_ext.quantize import default_int8_path


def test_cache_dir_env_expands_user_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PARAFORMER_EXT_CACHE", "~/c")
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PARAFORMER_EXT_CACHE")
    assert cache_dir() == tmp_path / ".cache" / "paraformer_ext"


def test_every_user_of_the_cache_takes_it_from_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PARAFORMER_EXT_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    # a model folder that cannot be written (here: does not exist) sends model_int8.pt to the cache
    p = default_int8_path(tmp_path / "missing" / "model.pt")
    assert p.parent == cache_dir() / "int8" and p.suffix == ".pt"
