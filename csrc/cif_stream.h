#pragma once
// Streaming CIF (FunASR's CifPredictorV2.forward_chunk; semantics and shapes in paraformer_ext/ops/cif_stream.py):
// the argument checks and the slot arithmetic shared by the CPU and CUDA implementations.
//
// Per stream the slots are [carried state, frames t < lengths[b], tail (only when is_final[b])], integrated in
// the compute type ct (alphas' dtype) with every operation rounded on its own, exactly as FunASR's 0-d tensor
// loop rounds it (no FMA: the CPU file is compiled with -ffp-contract=off, the CUDA file uses _rn intrinsics):
//   a + I < thr:  I = I + a;  S = S + a*h
//   else:         S = S + (thr - I)*h;  emit S;  I = I + a;  I = I - thr;  S = I*h
// and the carried state after the last slot is (I, I > 0 ? S / I : S).
#include "common.h"

namespace paraformer_ext {

struct CifStreamShape {
  int64_t B, T, D;
};

inline CifStreamShape check_cif_stream(const at::Tensor& hidden, const at::Tensor& alphas, const at::Tensor& lengths,
                                       const at::Tensor& carry_alpha, const at::Tensor& carry_hidden,
                                       const at::Tensor& is_final) {
  const char* op = "cif_stream";
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must be (B, T, D), got ", hidden.sizes());
  check_float_tensor(hidden, op, "hidden");
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  TORCH_CHECK(alphas.dim() == 2 && alphas.size(0) == B && alphas.size(1) == T, op, ": alphas must be (B, T) = (", B,
              ", ", T, "), got ", alphas.sizes());
  TORCH_CHECK(alphas.scalar_type() == at::kFloat || alphas.scalar_type() == at::kDouble, op,
              ": alphas must be float32 or float64 (the compute dtype), got ", alphas.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B && lengths.scalar_type() == at::kLong, op,
              ": lengths must be (B,) = (", B, ",) int64, got ", lengths.scalar_type(), " ", lengths.sizes());
  TORCH_CHECK(carry_alpha.dim() == 1 && carry_alpha.size(0) == B && carry_alpha.scalar_type() == alphas.scalar_type(),
              op, ": carry_alpha must be (B,) = (", B, ",) of alphas' dtype ", alphas.scalar_type(), ", got ",
              carry_alpha.scalar_type(), " ", carry_alpha.sizes());
  TORCH_CHECK(carry_hidden.dim() == 2 && carry_hidden.size(0) == B && carry_hidden.size(1) == D &&
                  carry_hidden.scalar_type() == alphas.scalar_type(),
              op, ": carry_hidden must be (B, D) = (", B, ", ", D, ") of alphas' dtype ", alphas.scalar_type(),
              ", got ", carry_hidden.scalar_type(), " ", carry_hidden.sizes());
  TORCH_CHECK(is_final.dim() == 1 && is_final.size(0) == B && is_final.scalar_type() == at::kBool, op,
              ": is_final must be (B,) = (", B, ",) bool, got ", is_final.scalar_type(), " ", is_final.sizes());
  check_same_device(alphas, hidden, op, "alphas", "hidden");
  check_same_device(lengths, hidden, op, "lengths", "hidden");
  check_same_device(carry_alpha, hidden, op, "carry_alpha", "hidden");
  check_same_device(carry_hidden, hidden, op, "carry_hidden", "hidden");
  check_same_device(is_final, hidden, op, "is_final", "hidden");
  check_lengths_range(lengths, T, op);
  return {B, T, D};
}

}  // namespace paraformer_ext
