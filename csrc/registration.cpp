// Every op's schema, in one place. Implementations register per backend in <op>_cpu.cpp / <op>_cuda.cu;
// fake (meta) implementations and autograd live in Python (paraformer_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY(paraformer_ext, m) {
  // FSMN memory block (spec paraformer.md §4.5): out = residual + mask * (xm + dwconv(xm)) + bias, xm = mask * x.
  // x: (B, T, D); weight: (D, K); lengths: (B,) int64 or None (all frames valid); left: taps before t.
  // residual (B, T, D) and bias (D,) are added after the mask (the encoder adds both to the memory).
  m.def("fsmn_memory(Tensor x, Tensor weight, Tensor? lengths, int left, Tensor? residual, Tensor? bias=None) -> Tensor");
  // Gradient of fsmn_memory's weight: grad_weight[d, j] = sum_{b,t} g'[b,t,d] * xm[b, t+j-left, d].
  m.def("fsmn_memory_weight_grad(Tensor grad_out, Tensor x, Tensor? lengths, int left, int kernel_size) -> Tensor");
  // CIF integrate-and-fire (spec paraformer.md §3.3-3.4; semantics in paraformer_ext/ops/cif.py).
  // hidden: (B, T, D); alphas: (B, T) float32/float64; lengths: (B,) int64 or None; tail_threshold > 0 adds the
  // tail slot at index lengths[b]. Returns (embeds (B, N, D), token_num (B,) int64, fires (B, T or T+1),
  // fire_frames (B, N) int64, -1 padded) with N = max(max token_num, min_tokens).
  m.def("cif(Tensor hidden, Tensor alphas, Tensor? lengths, float threshold, float tail_threshold, int min_tokens) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients of cif's embeds (and fires) w.r.t. hidden and alphas for the fire pattern of these inputs.
  m.def("cif_backward(Tensor grad_embeds, Tensor? grad_fires, Tensor hidden, Tensor alphas, Tensor? lengths, "
        "float threshold, float tail_threshold) -> (Tensor, Tensor)");

  // Streaming CIF (FunASR's CifPredictorV2.forward_chunk; semantics in paraformer_ext/ops/cif_stream.py): slots
  // [carried state, frames t < lengths[b], tail if is_final[b]] integrated in alphas' dtype (float32: FunASR's).
  // hidden (B, T, D) float32/float64/float16/bfloat16; alphas (B, T) float32/float64; lengths (B,) int64;
  // carry_alpha (B,), carry_hidden (B, D) of alphas' dtype; is_final (B,) bool. Returns (embeds (B, N, D) of
  // hidden's dtype, token_num (B,) int64, fire_slots (B, N) int64 -1 padded, carry_alpha, carry_hidden).
  // Inference only: no autograd.
  m.def("cif_stream(Tensor hidden, Tensor alphas, Tensor lengths, Tensor carry_alpha, Tensor carry_hidden, "
        "Tensor is_final, float threshold, float tail_threshold) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Counter-based dropout (semantics in paraformer_ext/ops/dropout.py): out = (residual +) x * m with
  // m = 1 / (1 - p) where hash(seed, i) >= p * 2^32, else 0; the mask is a function of (seed, element index),
  // so the backward pass is this op on the gradient with the same seed. x any float dtype; p in [0, 1].
  m.def("dropout_hash(Tensor x, float p, int seed, Tensor? residual=None) -> Tensor");

  // Int8 (W8A8) linear building blocks (conventions in paraformer_ext/ops/int8.py; inference only, no autograd).
  // Per-row symmetric quantization: x (M, K) float32/float16/bfloat16 -> (q (M, K) int8, scale (M,) float32)
  // with scale = absmax / 127 and q = clamp(round_half_even(x / scale), -127, 127) (all-zero rows: 0, 0).
  m.def("quantize_rows(Tensor x) -> (Tensor, Tensor)");
  // y = act(float(acc) * row_scale[m] * col_scale[n] + bias[n]) + residual[m, n] in float32, in that order,
  // written as out_dtype. acc: (M, N) int32 (torch._int_mm); row_scale (M,), col_scale (N,) float32;
  // bias (N,) any float dtype; residual (M, N) of out_dtype (rows may be strided); act = ReLU or identity.
  m.def("int8_linear_epilogue(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor? bias, Tensor? residual, "
        "bool relu, ScalarType out_dtype) -> Tensor");
  // The epilogue's float row h (no residual), optionally LayerNorm'ed over N (ln_weight, ln_bias, eps), then
  // quantized per row like quantize_rows: feeds the next int8 GEMM without writing h. Returns (q (M, N), scale (M,)).
  m.def("int8_linear_epilogue_quantize(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor? bias, bool relu, "
        "Tensor? ln_weight, Tensor? ln_bias, float eps) -> (Tensor, Tensor)");
  // LayerNorm over K (float32 statistics, biased variance) fused with quantize_rows: x (M, K) -> (q, scale).
  m.def("layer_norm_quantize_rows(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
  // Split activations: x (M, K) (LayerNorm'ed first when ln_weight is given) quantized per row, then the rows'
  // rounding errors x - q * scale quantized again. Returns (q (2M, K) int8: the M rows, then the M error rows,
  // scale (M,), scale_lo (M,)), so one integer GEMM covers both parts.
  m.def("quantize_rows_split(Tensor x, Tensor? ln_weight, Tensor? ln_bias, float eps) -> (Tensor, Tensor, Tensor)");
  // Output projection + log_softmax + argmax without the (M, V) logits (semantics in paraformer_ext/ops/out_proj.py).
  // x: (M, D) float32/float16/bfloat16; weight: (V, D) of x's dtype, or int8 with weight_scale (V,) float32
  // (x is then quantized per row); bias: (V,) or None; chunk: vocabulary columns per tile, 0 = automatic.
  // Returns (ids (M,) int64, logp (M,) float32): the argmax of each row's logits (lowest index on ties) and
  // its log-probability. Inference only: no autograd.
  m.def("out_proj_argmax(Tensor x, Tensor weight, Tensor? bias, Tensor? weight_scale, int chunk) -> (Tensor, Tensor)");
  // Hotword biasing: beam search over one utterance's CIF positions (semantics in paraformer_ext/ops/hotwords.py).
  // logp: (N, V) float32 on the CPU; the Aho-Corasick graph: child_offsets (S+1,), edges (E, 2) [token, child],
  // nodes (S, 4) [fail, depth, word, dict_next] int64, node_scores (S, 2) [provisional, completion] float64.
  // Returns (ids (N,) int64, fired (F, 3) int64 [word, start, end)). Host only, inference only: no autograd.
  m.def("hotword_decode(Tensor logp, Tensor child_offsets, Tensor edges, Tensor nodes, Tensor node_scores, int beam, "
        "int topk, float margin, int eos_id) -> (Tensor, Tensor)");
}

// Not differentiable (an argmax and its log-probability for decoding): autograd passes straight through, so
// the outputs never require grad, even for an nn.Linear's parameters outside no_grad.
TORCH_LIBRARY_IMPL(paraformer_ext, Autograd, m) {
  m.impl("out_proj_argmax", torch::CppFunction::makeFallthrough());
  m.impl("hotword_decode", torch::CppFunction::makeFallthrough());
  m.impl("cif_stream", torch::CppFunction::makeFallthrough());
}
