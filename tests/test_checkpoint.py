"""Loading FunASR model directories: the happy paths FunASR accepts, and a loud error wherever FunASR
would silently go wrong (missing/unexpected keys, shape mismatches) or the directory is not a Paraformer."""
from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch
import yaml

from conftest import golden_checkpoint, needs_shared
from paraformer_ext import load
from paraformer_ext.checkpoint import ModelLoadError, read_state_dict, resolve_model_dir
from paraformer_ext.model.config import UnsupportedModelError

pytestmark = needs_shared


@pytest.fixture()
def ckpt(tmp_path):
    src = golden_checkpoint("small")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _edit_config(d, fn):
    cfg = yaml.safe_load(open(d / "config.yaml"))
    fn(cfg)
    yaml.safe_dump(cfg, open(d / "config.yaml", "w"), allow_unicode=True)


def _edit_weights(d, fn):
    sd = torch.load(d / "model.pt", weights_only=True)
    sd = fn(sd)
    torch.save(sd, d / "model.pt")


def test_loads_golden_small(ckpt):
    asr = load(ckpt, kernels=False)
    assert len(asr.tokens) == 8404
    assert asr.model.cfg.encoder.num_blocks == 6 and asr.model.decoder.decoders2 is not None


def test_missing_key_is_named(ckpt):
    _edit_weights(ckpt, lambda sd: {k: v for k, v in sd.items() if k != "encoder.encoders.2.norm1.weight"})
    with pytest.raises(ModelLoadError, match=r"missing keys \(1\): encoder\.encoders\.2\.norm1\.weight"):
        load(ckpt, kernels=False)


def test_unexpected_key_is_named(ckpt):
    _edit_weights(ckpt, lambda sd: {**sd, "decoder.bias_encoder.weight": torch.zeros(3)})
    with pytest.raises(ModelLoadError, match=r"unexpected keys \(1\): decoder\.bias_encoder\.weight"):
        load(ckpt, kernels=False)


def test_shape_mismatch_is_named(ckpt):
    _edit_weights(ckpt, lambda sd: {**sd, "predictor.cif_output.weight": torch.zeros(1, 255)})
    with pytest.raises(ModelLoadError, match=r"predictor\.cif_output\.weight: checkpoint \(1, 255\) vs model \(1, 256\)"):
        load(ckpt, kernels=False)


def test_geometry_comes_from_config(ckpt):
    # a config that says 5 encoder blocks does not match 6 blocks of weights: unexpected keys, named
    _edit_config(ckpt, lambda c: c["encoder_conf"].update(num_blocks=5))
    with pytest.raises(ModelLoadError, match=r"unexpected keys .*encoder\.encoders\.4\."):
        load(ckpt, kernels=False)


def test_wrapped_and_module_prefixed_state_dicts_load(ckpt):
    _edit_weights(ckpt, lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}})
    ref = golden_checkpoint("small")
    a = read_state_dict(ckpt / "model.pt")
    b = read_state_dict(ref / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["config.yaml", "model.pt", "am.mvn"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    (ckpt / "configuration.json").unlink()
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        load(ckpt, kernels=False)


def test_missing_tokens(ckpt):
    (ckpt / "tokens.json").unlink()
    (ckpt / "configuration.json").unlink()
    with pytest.raises(ModelLoadError, match="tokens.json or tokens.txt"):
        load(ckpt, kernels=False)


def test_tokens_txt_is_accepted(ckpt):
    toks = json.load(open(ckpt / "tokens.json", encoding="utf-8"))
    (ckpt / "tokens.json").unlink()
    (ckpt / "configuration.json").unlink()
    (ckpt / "tokens.txt").write_text("\n".join(toks) + "\n", encoding="utf-8")
    assert len(load(ckpt, kernels=False).tokens) == 8404


def test_configuration_json_file_map(ckpt):
    (ckpt / "model.pt").rename(ckpt / "weights.bin")
    (ckpt / "am.mvn").rename(ckpt / "global.mvn")
    conf = json.load(open(ckpt / "configuration.json"))
    conf["file_path_metas"].update(init_param="weights.bin", frontend_conf={"cmvn_file": "global.mvn"})
    json.dump(conf, open(ckpt / "configuration.json", "w"))
    files = resolve_model_dir(ckpt)
    assert files.weights.name == "weights.bin" and files.cmvn.name == "global.mvn"


def test_malformed_files(ckpt):
    (ckpt / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ModelLoadError, match="not valid YAML"):
        load(ckpt, kernels=False)


def test_malformed_weights(ckpt):
    (ckpt / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot be read as a torch state_dict"):
        load(ckpt, kernels=False)


@pytest.mark.parametrize(
    "role,value,what",
    [
        ("model", "SeacoParaformer", "SeACo"),
        ("model", "BiCifParaformer", "BiCif"),
        ("predictor", "CifPredictorV3", "upsampling"),
    ],
)
def test_unsupported_model_classes(ckpt, role, value, what):
    _edit_config(ckpt, lambda c: c.__setitem__(role, value))
    with pytest.raises(UnsupportedModelError, match=rf"{role} is '{value}'.*{what}.*supported: model Paraformer"):
        load(ckpt, kernels=False)


@pytest.mark.parametrize("role,value", [("model", "ParaformerStreaming"), ("encoder", "SANMEncoderChunkOpt")])
def test_offline_streaming_halves_do_not_mix(ckpt, role, value):
    """A streaming model needs the chunked encoder and the offline model the plain one (both are supported)."""
    _edit_config(ckpt, lambda c: c.__setitem__(role, value))
    with pytest.raises(UnsupportedModelError, match=r"Paraformer \+ SANMEncoder and ParaformerStreaming \+ SANMEncoderChunkOpt"):
        load(ckpt, kernels=False)


def test_unknown_config_key(ckpt):
    _edit_config(ckpt, lambda c: c["encoder_conf"].update(flash=True))
    with pytest.raises(ValueError, match=r"encoder_conf has keys paraformer_ext does not know: \['flash'\]"):
        load(ckpt, kernels=False)


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nope", kernels=False)


# --- inference-only exports without decoder.embed (spec training.md §7) ------------------------------------------


def test_export_without_training_embed_loads_with_tied_embed(ckpt):
    full = load(ckpt).model.state_dict()
    _edit_weights(ckpt, lambda sd: {k: v for k, v in sd.items() if not k.startswith("decoder.embed.")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inference never reads decoder.embed: the load is silent
        m = load(ckpt).model
    assert re.search(r"no decoder\.embed\.0\.weight.*copy of decoder\.output_layer\.weight", m.filled_training_embed)
    sd = m.state_dict()
    assert torch.equal(sd["decoder.embed.0.weight"], sd["decoder.output_layer.weight"])
    assert sd["decoder.embed.0.weight"].data_ptr() != sd["decoder.output_layer.weight"].data_ptr()  # a copy, not tied
    assert not torch.equal(full["decoder.embed.0.weight"], full["decoder.output_layer.weight"])  # the test means it
    assert all(torch.equal(sd[k], full[k]) for k in full if not k.startswith("decoder.embed."))


def test_float16_weights_load_as_float32(ckpt):
    # the shipped model stores float16 (half the package); the model computes in float32 on the rounded values
    full = {k: v for k, v in load(ckpt).model.state_dict().items() if not k.startswith("decoder.embed.")}
    _edit_weights(ckpt, lambda sd: {k: v.half() if v.is_floating_point() else v for k, v in sd.items()
                                    if not k.startswith("decoder.embed.")})
    asr = load(ckpt)
    sd = asr.model.state_dict()
    assert all(sd[k].dtype == full[k].dtype for k in full)
    assert all(torch.equal(sd[k], full[k].half().to(full[k].dtype)) for k in full)
    assert any(not torch.equal(sd[k], full[k]) for k in full if full[k].is_floating_point())  # the test means it
    assert torch.equal(sd["decoder.embed.0.weight"], sd["decoder.output_layer.weight"])


def test_full_checkpoint_fills_nothing(ckpt):
    assert not hasattr(load(ckpt).model, "filled_training_embed")


def test_missing_embed_with_mismatched_output_layer_keeps_random_init():
    from paraformer_ext.checkpoint import fill_training_embed, load_state_dict_strict

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Sequential(torch.nn.Embedding(10, 4))
            self.output_layer = torch.nn.Linear(4, 12)  # another vocabulary than the embedding's

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Decoder()

    m = Model()
    before = m.decoder.embed[0].weight.detach().clone()
    sd = {k: torch.randn(v.shape) for k, v in m.state_dict().items() if not k.startswith("decoder.embed.")}
    load_state_dict_strict(m, sd, "toy.pt")
    assert re.search(r"at random \(decoder\.output_layer\.weight is \(12, 4\), not \(10, 4\)\)", m.filled_training_embed)
    assert torch.equal(m.decoder.embed[0].weight, before)
    assert torch.equal(m.decoder.output_layer.weight, sd["decoder.output_layer.weight"])
    # an odd decoder.embed key is not papered over: the strict check names it
    with pytest.raises(ModelLoadError, match="decoder.embed.0.weight"):
        load_state_dict_strict(m, {**sd, "decoder.embed.1.weight": torch.zeros(10, 4)}, "toy.pt")
    assert fill_training_embed(m, {**sd, "decoder.embed.0.weight": before}, "toy.pt")["decoder.embed.0.weight"] is before


def test_assign_on_the_meta_device_holds_the_weights_once():
    from paraformer_ext.checkpoint import load_state_dict_strict

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Sequential(torch.nn.Embedding(10, 4))
            self.output_layer = torch.nn.Linear(4, 12)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Decoder()

    with torch.device("meta"):
        m = Model()
    sd = {"decoder.output_layer.weight": torch.randn(12, 4), "decoder.output_layer.bias": torch.randn(12).double()}
    load_state_dict_strict(m, sd, "toy.pt", assign=True)
    assert "at random" in m.filled_training_embed
    assert m.decoder.output_layer.weight.data_ptr() == sd["decoder.output_layer.weight"].data_ptr()  # not a copy
    assert m.decoder.output_layer.bias.dtype == torch.float32  # cast to the module's dtype, as a copy would be
    assert torch.equal(m.decoder.output_layer.bias, sd["decoder.output_layer.bias"].float())
    emb = m.decoder.embed[0].weight
    assert not emb.is_meta and torch.isfinite(emb).all() and 0.5 < float(emb.detach().std()) < 1.5  # N(0, 1), not meta
    assert not any(t.is_meta for t in m.state_dict().values())


def test_load_gives_the_checkpoint_weights_with_nothing_left_on_meta(ckpt):
    sd = read_state_dict(ckpt / "model.pt")
    m = load(ckpt).model
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
