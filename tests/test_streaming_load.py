"""Streaming model directories (ParaformerStreaming, SANMEncoderChunkOpt) load with the strict loader; they are
not decoded offline (FunASR has no whole-utterance path for them), and offline directories have no stream()."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from conftest import golden_checkpoint, needs_shared, stream_checkpoint
from paraformer_ext import ModelLoadError, UnsupportedModelError, load

pytestmark = needs_shared


def test_streaming_dir_loads_strictly():
    asr = load(stream_checkpoint(), kernels=False)
    cfg = asr.model.cfg
    assert asr.streaming and cfg.streaming and cfg.encoder.streaming
    assert cfg.encoder.input_layer == "pe_online" and cfg.decoder.sanm_shfit == 5
    assert cfg.frontend_class == "WavFrontend"
    # the decoder's FSMN of the online model is causal: left = K − 1 = 10 taps back, none ahead
    assert asr.model.decoder.decoders[0].self_attn.left == 10
    # every weight is the checkpoint's (strict loading: nothing left at its random initialisation)
    sd = torch.load(stream_checkpoint() / "model.pt", weights_only=True)
    for k, t in asr.model.state_dict().items():
        assert torch.equal(t, sd[k]), k


def test_streaming_dir_with_missing_weight_is_refused(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(stream_checkpoint(), d)
    sd = torch.load(d / "model.pt", weights_only=True)
    del sd["encoder.encoders.0.self_attn.fsmn_block.weight"]
    torch.save(sd, d / "model.pt")
    with pytest.raises(ModelLoadError, match="fsmn_block"):
        load(d, kernels=False)


@pytest.mark.parametrize("change, match", [
    ({"encoder": "SANMEncoder"}, "ParaformerStreaming \\+ SANMEncoderChunkOpt"),
    ({"encoder_conf": {"input_layer": "pe"}}, "pe_online"),
    ({"frontend": "WavFrontendMel23"}, "frontend"),
])
def test_streaming_config_mismatches_are_named(tmp_path, change, match):
    d = tmp_path / "m"
    shutil.copytree(stream_checkpoint(), d)
    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    for k, v in change.items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(UnsupportedModelError, match=match):
        load(d, kernels=False)


def test_chunk_keys_refused_on_offline_encoder(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(golden_checkpoint("small"), d)
    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    cfg["encoder_conf"]["chunk_size"] = [12, 15]
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="SANMEncoderChunkOpt"):
        load(d, kernels=False)


def test_streaming_dir_is_not_decoded_offline():
    asr = load(stream_checkpoint(), kernels=False)
    with pytest.raises(UnsupportedModelError, match=r"asr\.stream\(chunk_size=10\)"):
        asr.transcribe(torch.zeros(16000))
    with pytest.raises(UnsupportedModelError, match="ParaformerStreaming"):
        asr.pipeline.decode(torch.zeros(1, 10, 560), torch.tensor([10]))


def test_offline_dir_has_no_stream():
    asr = load(golden_checkpoint("small"), kernels=False)
    assert not asr.streaming
    with pytest.raises(UnsupportedModelError, match="offline Paraformer"):
        asr.stream()


def test_online_variant_changes_are_the_goldens():
    """synthetic.ONLINE_CONFIG_CHANGES (what the benchmarks use to make an online twin) is what FunASR's
    streaming goldens were made with."""
    import json

    from conftest import SHARED
    from paraformer_ext.synthetic import ONLINE_CONFIG_CHANGES

    golden = json.loads((SHARED / "golden" / "stream" / "stream.json").read_text(encoding="utf-8"))["config_changes"]
    assert ONLINE_CONFIG_CHANGES == golden
