#pragma once
// Counter-based dropout: the keep decision of element i is a hash of (seed, i), so the backward pass
// regenerates the mask instead of storing it, and the CPU and CUDA kernels (and the Python reference,
// paraformer_ext/ops/dropout.py) draw the same mask for the same seed.
#include "common.h"

namespace paraformer_ext {

// Chris Wellons' lowbias32: a bijective 32-bit finalizer with low avalanche bias; 32-bit multiplies only, so
// it vectorizes on AVX2 (no 64-bit vector multiply there).
PFX_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The seed's two halves enter in separate rounds, so two seeds never give shifted copies of one mask.
struct DropoutKey {
  uint32_t k0, k1;
};

inline DropoutKey dropout_key(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

// Element i is kept when its hash is >= threshold = round(p * 2^32) (p = 1: nothing is kept). Indices past
// 2^32 fold their high word into the first key, so every element of a tensor of any size has its own draw.
// dropout_key_for(key, i >> 32) is the first key of the 2^32 indices that share i's high word; the CPU loop
// hoists it, leaving 32-bit integer work per element.
PFX_HD uint32_t dropout_key_for(DropoutKey key, uint64_t high_word) {
  return key.k0 ^ mix32(static_cast<uint32_t>(high_word));
}

PFX_HD bool dropout_keep_low(uint32_t k0, uint32_t k1, uint32_t low_word, uint32_t threshold) {
  return mix32(mix32(low_word ^ k0) + k1) >= threshold;
}

PFX_HD bool dropout_keep(DropoutKey key, uint64_t i, uint32_t threshold) {
  return dropout_keep_low(dropout_key_for(key, i >> 32), key.k1, static_cast<uint32_t>(i), threshold);
}

struct DropoutArgs {
  uint32_t threshold;
  double scale;  // 1 / (1 - p) for kept elements; 0 when p = 1 (nothing is kept)
};

inline DropoutArgs check_dropout_args(const at::Tensor& x, double p, const c10::optional<at::Tensor>& residual,
                                      const char* op) {
  check_float_tensor(x, op, "x");
  TORCH_CHECK(p >= 0.0 && p <= 1.0, op, ": p must be in [0, 1], got ", p);
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
                residual->sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual dtype ", residual->scalar_type(),
                " differs from x dtype ", x.scalar_type());
    check_same_device(*residual, x, op, "residual", "x");
  }
  const double t = p * 4294967296.0;
  const bool all = p >= 1.0;
  // p = 1 keeps nothing through scale = 0 (the hash may still say keep); p close to 1 rounds to the largest
  // threshold, which keeps one element in 2^32
  const uint32_t threshold = all ? 0xffffffffu : static_cast<uint32_t>(t < 4294967294.5 ? t + 0.5 : 4294967295.0);
  return {threshold, all ? 0.0 : 1.0 / (1.0 - p)};
}

}  // namespace paraformer_ext
