"""The FunASR-exact training forward (spec training.md §1, paraformer.md §1.2): `compute_loss`."""
from __future__ import annotations

from typing import Sequence

import torch

from ..model.paraformer import zero_padded_frames
from ..quantize import Int8Linear
from .criteria import label_smoothing_loss, mae_loss
from .glm import glm_embeds, glm_mask, glm_target_num
from .mwer import MwerConfig, mwer_loss
from .specaug import spec_aug
from .streaming import chunk_configs, choose_chunk_config, chunked_forward


def _check_inputs(model, speech, speech_lengths, text, text_lengths):
    if speech.dim() != 3 or speech.size(2) != model.cfg.encoder.input_size:
        raise ValueError(f"speech must be frontend features (B, T, {model.cfg.encoder.input_size}), got {tuple(speech.shape)}")
    B, T, _ = speech.shape
    if text.dim() != 2 or text.size(0) != B:
        raise ValueError(f"text must be (B, L) = ({B}, L) token ids padded with -1, got {tuple(text.shape)}")
    for name, t, hi in (("speech_lengths", speech_lengths, T), ("text_lengths", text_lengths, text.size(1))):
        if t.shape != (B,) or t.is_floating_point():
            raise ValueError(f"{name} must be a (B,) = ({B},) integer tensor, got {tuple(t.shape)} {t.dtype}")
        if B and (bool((t < 0).any()) or bool((t > hi).any())):
            raise ValueError(f"{name} must lie in [0, {hi}], got {t.tolist()}")
    if B and bool((speech_lengths < 1).any()):
        raise ValueError(f"every utterance needs at least one frame; speech_lengths = {speech_lengths.tolist()}")
    valid = torch.arange(text.size(1), device=text.device)[None, :] < text_lengths.to(text.device)[:, None]
    V = model.cfg.vocab_size
    ids = text[valid]
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= V).any())):
        raise ValueError(f"text ids within text_lengths must lie in [0, {V}) (the token list); found "
                         f"{int(ids.min())}..{int(ids.max())} — is text padded with -1 only past text_lengths?")


def _targets(text, text_lengths, mc):
    """FunASR's ys_pad for the decoder and the predictor: text, plus eos when predictor_bias = 1 (add_sos_eos's
    ys_out), padded with ignore_id. Returns (ys (B, L), ys_lens (B,)), L = max(ys_lens)."""
    lens = text_lengths.to(torch.int64) + mc.predictor_bias
    L = int(lens.max()) if lens.numel() else 0
    ar = torch.arange(L, device=text.device)[None, :]
    ys = torch.full((text.size(0), L), mc.ignore_id, dtype=torch.int64, device=text.device)
    n = min(L, text.size(1))
    ys[:, :n] = torch.where(ar[:, :n] < text_lengths[:, None], text[:, :n].long(), ys[:, :n])
    if mc.predictor_bias == 1:
        ys = torch.where(ar == text_lengths[:, None], torch.full_like(ys, mc.eos), ys)
    return ys, lens


def compute_loss(model, speech: torch.Tensor, speech_lengths: torch.Tensor, text: torch.Tensor,
                 text_lengths: torch.Tensor, *, sampling_ratio: float | None = None,
                 glm_positions: Sequence[torch.Tensor] | None = None, mwer: MwerConfig | None = None,
                 generator: torch.Generator | None = None, chunk_config: int | None = None) -> dict:
    """FunASR's `Paraformer.forward` (spec paraformer.md §1.2, training.md §1-§2) on a padded batch.

    model: `Paraformer` (e.g. `paraformer_ext.load(dir).model`, after `.requires_grad_(True)`); speech: (B, T, F)
    float32 frontend features (F = encoder input size, 560 for LFR 7×80); speech_lengths: (B,) valid frames;
    text: (B, L) token ids padded with -1; text_lengths: (B,). The model's config supplies lsm_weight,
    length_normalized_loss, predictor_weight, predictor_bias and (unless given) sampling_ratio.

    encoder → predictor with the targets (alphas rescaled to Σα = target length, eos appended when
    predictor_bias = 1) → [first decoder pass without grad → GLM sampler] → second pass → label-smoothed CE
    → MAE(target length, unscaled Σα) → loss = loss_att + predictor_weight · loss_pre.

    glm_positions: per utterance, positions in priority order; the first ⌊Hamming · ratio⌋ take the target
    embedding (FunASR's `randperm(seq_len)` reproduces its draw). Without it they are drawn as FunASR draws
    them, with torch.randperm from `generator` (None: the global RNG, as FunASR). In train mode
    (model.train()) config.yaml's SpecAugLFR masks the features first (specaug.py), drawing from the same
    generator; eval mode never augments.

    Returns {"loss", "loss_att", "loss_pre"} (0-dim float32 tensors, with grad), "acc" (float: first-pass token
    accuracy over target positions, eos included), "weight" (float: Σ target lengths incl. eos when
    length_normalized_loss, else B; FunASR's batch weight), "token_length" ((B,) unscaled Σα, detached),
    "first_pass_ids" ((B, L) argmax of the first pass), "glm_mask" ((B, L) bool or None).

    A streaming model (cfg.streaming: ParaformerStreaming) runs FunASR's chunk-masked training forward instead
    (streaming.py): configuration `chunk_config` of encoder_conf's chunk lists, or in train mode one drawn with
    torch.randint from `generator` before SpecAug (FunASR's order; eval mode: 0); the result adds "chunk_config".

    mwer: a mwer.MwerConfig turns on MWER with negative sampling on the second pass's logits (candidates drawn
    from `generator`): loss = ce_weight · loss_att + predictor_weight · loss_pre + weight · loss_mwer, and the
    result adds "loss_mwer", "mwer_mean_errors", "mwer_min_errors".

    Differences from FunASR, on purpose or not yet built:
    * padded encoder frames are zeroed before the predictor, so an utterance gets the same loss contribution
      and gradients in any padded batch (FunASR's predictor convolution reads the first padded frame);
    * a CTC branch (model_conf.ctc_weight > 0) is not built: NotImplementedError;
    * train mode applies SpecAugLFR (time warping is not built: configuring it raises) and every dropout where
      FunASR has one (layer outputs, FFN, attention probabilities, FSMN memory); the random draws are ours, so
      only eval mode (as the goldens) can be compared with FunASR number for number.
    """
    if mwer is not None and not isinstance(mwer, MwerConfig):
        raise TypeError(f"mwer must be a paraformer_ext.training.MwerConfig or None, got {type(mwer).__name__}")
    mc = model.cfg.model
    if mc.ctc_weight > 0:
        raise NotImplementedError(f"model_conf.ctc_weight = {mc.ctc_weight}: the CTC loss branch is not built; "
                                  "train with ctc_weight 0 (as paraformer-large's config)")
    if mc.predictor_bias not in (0, 1):
        raise ValueError(f"model_conf.predictor_bias must be 0 or 1 (FunASR), got {mc.predictor_bias}")
    if torch.is_grad_enabled() and any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("compute_loss: this model has int8 layers, which have no backward; train the float model "
                         "(paraformer_ext.load without quantize=) and quantize afterwards")
    ratio = mc.sampling_ratio if sampling_ratio is None else float(sampling_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling_ratio must lie in [0, 1], got {ratio}")
    device = speech.device
    speech_lengths = speech_lengths.to(device)
    text, text_lengths = text.to(device), text_lengths.to(device)
    _check_inputs(model, speech, speech_lengths, text, text_lengths)
    ys, ys_lens = _targets(text, text_lengths, mc)
    if int(ys_lens.sum()) == 0:
        raise ValueError("every target is empty (text_lengths all 0 and predictor_bias 0): nothing to train on")

    L = ys.size(1)
    geometry = None
    if model.cfg.streaming:  # drawn first, as FunASR's random_choice precedes its encoder (and SpecAug)
        configs = chunk_configs(model.cfg.encoder)
        chunk_config = choose_chunk_config(len(configs), model.training, generator, chunk_config)
        geometry = configs[chunk_config]
    elif chunk_config is not None:
        raise ValueError("chunk_config is for streaming models (ParaformerStreaming); this one is offline")
    if model.training and model.cfg.specaug is not None:
        speech = spec_aug(speech, model.cfg.specaug, model.cfg.specaug_conf, generator)
    if geometry is not None:
        fwd = chunked_forward(model, speech, speech_lengths, ys_lens, L, geometry)
        memory, memory_lengths, memory_mask, pred, token_length = fwd
    else:
        # padded frames zeroed as in inference: an utterance trains the same in any batch (FunASR's does not)
        memory = zero_padded_frames(model.encode(speech, speech_lengths), speech_lengths)
        memory_lengths, memory_mask = speech_lengths, None
        pred = model.predictor(memory, speech_lengths, target_lengths=ys_lens)
        token_length = pred.alphas.sum(-1)  # unscaled Σα: the MAE's prediction (tail is off with targets)
    acoustic = pred.acoustic_embeds[:, :L].to(model.dtype)  # N = max target length rows (CIF pads with zeros)

    mask = None
    if ratio > 0:
        first_ids = model.decode_argmax(memory, memory_lengths, acoustic, ys_lens, memory_mask)[0]
        n = glm_target_num(first_ids, ys, ys_lens, ratio)
        mask = glm_mask(n, ys_lens, L, positions=glm_positions, generator=generator)
        target_emb = model.decoder.embed(ys.clamp_min(0))  # FunASR embeds pads as id 0; they are zeroed after
        semantic = glm_embeds(acoustic, target_emb, mask, ys_lens)
    else:
        semantic = acoustic
    logits = model.decoder(memory, memory_lengths, semantic, ys_lens, memory_mask)
    if mask is None:
        first_ids = logits.detach().argmax(-1)  # FunASR: without the sampler, accuracy of the only pass

    loss_att = label_smoothing_loss(logits, ys, mc.lsm_weight, mc.length_normalized_loss, mc.ignore_id)
    loss_pre = mae_loss(ys_lens, token_length, mc.length_normalized_loss)
    loss = (1.0 if mwer is None else mwer.ce_weight) * loss_att + mc.predictor_weight * loss_pre
    extra = {}
    if mwer is not None:
        m = mwer_loss(logits, ys, ys_lens, mwer, generator)
        loss = loss + mwer.weight * m.loss
        extra = {"loss_mwer": m.loss, "mwer_mean_errors": float(m.mean_errors), "mwer_min_errors": float(m.min_errors)}
    valid = ys != mc.ignore_id
    correct = int(((first_ids == ys) & valid).sum())
    weight = float(ys_lens.sum()) if mc.length_normalized_loss else float(ys.size(0))
    return {
        "loss": loss,
        "loss_att": loss_att,
        "loss_pre": loss_pre,
        "acc": correct / int(valid.sum()),
        "weight": weight,
        "token_length": token_length.detach(),
        "first_pass_ids": first_ids,
        "glm_mask": mask,
        **({"chunk_config": chunk_config} if geometry is not None else {}),
        **extra,
    }
