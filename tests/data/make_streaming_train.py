"""Writes tests/data/streaming_train.{json,npz}: FunASR 1.4.16's own `ParaformerStreaming.forward` (train mode,
every dropout rate 0 in the config, no SpecAug) on a tiny seeded streaming model, for tests/test_training_streaming.py.

Run with FunASR's venv and this checkout on the path (paraformer_ext builds the model directory; only its pure
Python parts are used):

    PYTHONPATH=. /work/main/benchmarks/anchors/.venv/bin/python tests/data/make_streaming_train.py

The model: `synthetic.make_random_model(preset "tiny", seed SEED)` under `online_variant(CHANGES)` (three chunk
configurations, one with pad_left, every dropout 0). The test rebuilds it with `build_model` and checks the
state_dict hash stored here.

FunASR's random choices are fixed by monkeypatching:
* the chunk configuration: `overlap_chunk.gen_chunk_mask` gets the forced index. FunASR 1.4.16's forward draws the
  index (`random_choice`) but its `encode` drops the `ind` keyword, so unpatched it always trains configuration 0;
  the patch makes the drawn index the one used (see paraformer_ext/training/streaming.py);
* the GLM positions: torch.randperm is recorded while FunASR draws (seeded), and the permutations are stored.

Cases are batches of one, except `b2_c2_glm`, a padded batch chosen so that FunASR's predictor convolution reads
no padded row (configuration 2 has no look-ahead and the short utterance ends on a stride boundary). Every case
is one where FunASR's float32 Σα (rescaled to the target) reaches the target, which the script checks: when it
falls an ulp short, FunASR's CIF drops the last token's embedding and ours (which rescales exactly, as offline)
does not. The one-frame case has only eos as its target: with two tokens on one frame the rescaled α is 2, and
FunASR's vectorised cif_v1 then emits one embedding of weight 2 where ours (the loop `cif`'s rule) emits weight 1
and carries the rest; that CIF difference is the offline one, not the streaming forward's.

The file also holds FunASR's own chunk masks for edge cases (`masks/...`): gen_chunk_mask's encoder attention mask,
x_len_chunk and predictor mask, and build_scama_mask_for_cross_attention_decoder on given alphas.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

SEED = 11
# three configurations: paraformer-zh-streaming's two, and one with pad_left 2, no look-ahead, look-backs 1 / 2
CHUNKS = {"chunk_size": [12, 15, 10], "stride": [8, 10, 8], "pad_left": [0, 0, 2],
          "encoder_att_look_back_factor": [4, 4, 1], "decoder_att_look_back_factor": [1, 1, 2]}
NO_DROPOUT_ENC = {"dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0}
NO_DROPOUT_DEC = {"dropout_rate": 0.0, "positional_dropout_rate": 0.0, "self_attention_dropout_rate": 0.0,
                  "src_attention_dropout_rate": 0.0}
# (name, utterance lengths in LFR frames, target lengths, chunk configuration, sampling_ratio)
CASES = [
    ("b1_c0", [50], [9], 0, 0.0),
    ("b1_c1_glm", [61], [12], 1, 0.75),
    ("b1_c2_short_glm", [7], [3], 2, 0.75),  # shorter than one chunk
    ("b1_c2_len1", [1], [0], 2, 0.0),  # one frame, eos only (two tokens on one frame: see make_streaming_train)
    ("b2_c2_glm", [56, 32], [10, 6], 2, 0.75),
]
# (lengths, configuration) for the mask comparison
MASK_CASES = [([1], 0), ([7], 2), ([23], 0), ([40], 2), ([33], 1), ([56, 32, 1], 2), ([50, 13], 0)]


def changes() -> dict:
    from paraformer_ext.synthetic import ONLINE_CONFIG_CHANGES

    ch = json.loads(json.dumps(ONLINE_CONFIG_CHANGES))
    ch["encoder_conf"].update(CHUNKS)
    ch["encoder_conf"].update(NO_DROPOUT_ENC)
    ch["decoder_conf"].update(NO_DROPOUT_DEC)
    return ch


def build_model(out: Path) -> Path:
    """The fixture's streaming model directory (deterministic with a given torch)."""
    from paraformer_ext.synthetic import make_random_model, online_variant

    make_random_model(out / "offline", "tiny", seed=SEED)
    return online_variant(out / "offline", out / "online", changes())


def state_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def features(lengths, rng):
    """Frontend features of synthetic speech, cut to the wanted LFR lengths, zero-padded."""
    from paraformer_ext.synthetic import synthetic_speech

    feats = np.zeros((len(lengths), max(lengths), 560), np.float32)
    for b, n in enumerate(lengths):
        wav = synthetic_speech(0.06 * n + 0.2, int(rng.integers(1000)))
        f = _frontend(wav)
        assert f.shape[0] >= n, (f.shape, n)
        feats[b, :n] = f[:n]
    return feats


_FRONT = {}


def _frontend(wav):
    from paraformer_ext.frontend import FrontendConfig, WavFrontend, load_cmvn

    if "f" not in _FRONT:
        d = _FRONT["dir"]
        import yaml

        cfg = yaml.safe_load((d / "config.yaml").read_text())
        _FRONT["f"] = WavFrontend(FrontendConfig.from_dict(cfg["frontend_conf"]), load_cmvn(d / "am.mvn"))
    with torch.no_grad():
        f, _ = _FRONT["f"](torch.from_numpy(wav)[None])
    return f[0].numpy()


def main() -> int:
    import funasr
    from funasr import AutoModel
    from funasr.models.scama.chunk_utilis import overlap_chunk, build_scama_mask_for_cross_attention_decoder

    torch.set_num_threads(1)
    here = Path(__file__).resolve().parent
    tmp = Path(tempfile.mkdtemp())
    model_dir = build_model(tmp)
    _FRONT["dir"] = model_dir
    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True)
    model = am.model
    assert type(model).__name__ == "ParaformerStreaming", type(model)
    sd_hash = state_hash(torch.load(model_dir / "model.pt", weights_only=True))
    assert state_hash({k: v for k, v in model.state_dict().items()}) == sd_hash

    forced = {"ind": 0}
    orig_gen = overlap_chunk.gen_chunk_mask

    def gen_chunk_mask(self, x_len, ind=0, num_units=1, num_units_predictor=1):
        return orig_gen(self, x_len, forced["ind"], num_units, num_units_predictor)

    overlap_chunk.gen_chunk_mask = gen_chunk_mask
    overlap_chunk.random_choice = lambda self, training=True, decoding_ind=None: forced["ind"]

    rng = np.random.default_rng(SEED)
    out_js = {"funasr": funasr.__version__, "torch": torch.__version__, "seed": SEED, "changes": changes(),
              "state_sha256": sd_hash, "cases": {}}
    arrays = {}
    model.train()
    orig_align = model.predictor.gen_frame_alignments
    for name, lens, tlens, ind, ratio in CASES:
        forced["ind"] = ind
        model.sampling_ratio = ratio
        speech = features(lens, rng)
        text = np.full((len(lens), max(tlens)), -1, np.int64)
        for b, n in enumerate(tlens):
            text[b, :n] = rng.integers(3, 8403, n)
        draws = []
        real_randperm = torch.randperm

        def randperm(n, *a, **kw):
            p = real_randperm(n, *a, **kw)
            draws.append(p.clone())
            return p

        torch.manual_seed(1000 + len(out_js["cases"]))
        torch.randperm = randperm
        aligned = []
        model.predictor.gen_frame_alignments = lambda a, n: aligned.append(orig_align(a, n)[0].sum(-1)) or orig_align(a, n)
        try:
            model.zero_grad(set_to_none=True)
            loss, stats, weight = model(torch.from_numpy(speech).clone(), torch.tensor(lens, dtype=torch.int64),
                                        torch.from_numpy(text), torch.tensor(tlens, dtype=torch.int64))
            loss.backward()
        finally:
            torch.randperm = real_randperm
            del model.predictor.gen_frame_alignments
        # FunASR's float32 Σα can fall an ulp short of the target: its CIF then drops the last token's embedding,
        # which ours (the offline rule, Σα rescaled exactly) does not; the cases are chosen where every token fires
        if aligned[0].tolist() != [n + 1 for n in tlens]:
            raise SystemExit(f"{name}: FunASR's alignments {aligned[0].tolist()} miss a token of {tlens} + eos; "
                             "choose other lengths")
        grads = {k: (p.grad.double().norm().item() if p.grad is not None else 0.0) for k, p in model.named_parameters()}
        out_js["cases"][name] = {
            "lengths": lens, "text_lengths": tlens, "chunk_config": ind, "sampling_ratio": ratio,
            "loss": float(loss), "loss_att": float(stats["loss_att"]), "loss_pre": float(stats["loss_pre"]),
            "acc": float(stats["acc"]), "weight": float(weight), "randperm_lengths": [len(p) for p in draws],
            "grad_norms": grads,
        }
        arrays[f"{name}/speech"] = speech
        arrays[f"{name}/text"] = text
        for i, p in enumerate(draws):
            arrays[f"{name}/randperm_{i}"] = p.numpy()
        print(name, out_js["cases"][name]["loss"], stats["loss_att"].item(), stats["loss_pre"].item(), file=sys.stderr)

    # FunASR's masks on edge cases
    enc_conf = model.encoder
    oc = enc_conf.overlap_chunk_cls
    pred = model.predictor
    pred.train()
    masks = []
    for mi, (lens, ind) in enumerate(MASK_CASES):
        forced["ind"] = ind
        x_len = torch.tensor(lens, dtype=torch.int64)
        outs = orig_gen(oc, x_len, ind)
        B = len(lens)
        att = oc.get_mask_att_chunk_encoder(outs, "cpu", B)
        xlc = torch.from_numpy(outs[1].astype(np.int64))
        mpred = oc.get_mask_chunk_predictor(outs, "cpu", B)
        mdec = oc.get_mask_shift_att_chunk_decoder(outs, "cpu", B)
        # alphas: random compact ones, placed on the stride rows (x_rm_mask^T), rescaled to targets as the predictor
        T = max(lens)
        a = torch.from_numpy(rng.uniform(0.05, 0.6, (B, T)).astype(np.float32)) * (torch.arange(T)[None] < x_len[:, None])
        targets = torch.tensor([max(1, int(round(float(a[b].sum())))) + 1 for b in range(B)])
        rm = torch.from_numpy(outs[2]).float()  # (T, T')
        layout_alphas = a @ rm  # (B, T')
        tn = layout_alphas.sum(-1)
        scaled = layout_alphas * (targets / tn)[:, None]
        align, _ = pred.gen_frame_alignments(scaled, xlc)
        scama = build_scama_mask_for_cross_attention_decoder(
            predictor_alignments=align, encoder_sequence_length=xlc, chunk_size=1,
            encoder_chunk_size=oc.chunk_size_pad_shift_cur, attention_chunk_center_bias=0,
            attention_chunk_size=oc.chunk_size_pad_shift_cur, attention_chunk_type="chunk", step=None,
            predictor_mask_chunk_hopping=mpred, decoder_att_look_back_factor=oc.decoder_att_look_back_factor_cur,
            mask_shift_att_chunk_decoder=mdec, target_length=targets, is_training=True)
        masks.append({"lengths": lens, "chunk_config": ind, "targets": targets.tolist()})
        p = f"masks/{mi}/"
        arrays[p + "att"] = (att[0] > 0).numpy()  # the same for every utterance (lengths apply separately)
        arrays[p + "x_len_chunk"] = xlc.numpy()
        arrays[p + "predictor"] = (mpred[0, :, 0] > 0).numpy()
        arrays[p + "alphas"] = a.numpy()
        arrays[p + "scama"] = (scama > 0).numpy()
    out_js["masks"] = masks
    (here / "streaming_train.json").write_text(json.dumps(out_js, indent=1) + "\n")
    np.savez_compressed(here / "streaming_train.npz", **arrays)
    print("wrote", here / "streaming_train.json", here / "streaming_train.npz", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
