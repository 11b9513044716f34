// Counter-based dropout on the CPU: out = (residual +) x * (keep(seed, i) ? 1 / (1 - p) : 0), element-wise in
// float (double for float64). The hash loop has no branches, so the compiler vectorizes it.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "dropout.h"

namespace paraformer_ext {
namespace {

// One stretch of indices that share their high word: the key is fixed, the loop body is branch-free 32-bit
// integer and float work that GCC vectorizes (8 lanes on AVX2).
template <typename scalar_t, bool kResidual>
void dropout_stretch(const scalar_t* __restrict__ x, const scalar_t* __restrict__ residual, scalar_t* __restrict__ out,
                     int64_t n, uint32_t k0, uint32_t k1, uint32_t low0, uint32_t threshold,
                     at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t h = mix32(mix32((low0 + static_cast<uint32_t>(j)) ^ k0) + k1);
    const acc_t m = h >= threshold ? scale : acc_t(0);
    const acc_t y = static_cast<acc_t>(x[j]) * m;
    out[j] = static_cast<scalar_t>(kResidual ? static_cast<acc_t>(residual[j]) + y : y);
  }
}

template <typename scalar_t>
void dropout_kernel(const scalar_t* x, const scalar_t* residual, scalar_t* out, int64_t n, DropoutKey key,
                    uint32_t threshold, double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const uint64_t high = static_cast<uint64_t>(i) >> 32;
      const int64_t stop = std::min<int64_t>(end, static_cast<int64_t>((high + 1) << 32));
      const uint32_t k0 = dropout_key_for(key, high), low0 = static_cast<uint32_t>(i);
      if (residual)
        dropout_stretch<scalar_t, true>(x + i, residual + i, out + i, stop - i, k0, key.k1, low0, threshold, scale);
      else
        dropout_stretch<scalar_t, false>(x + i, nullptr, out + i, stop - i, k0, key.k1, low0, threshold, scale);
      i = stop;
    }
  });
}

at::Tensor dropout_hash_cpu(const at::Tensor& x_in, double p, int64_t seed, const c10::optional<at::Tensor>& residual_in) {
  const char* op = "paraformer_ext.dropout_hash";
  const DropoutArgs a = check_dropout_args(x_in, p, residual_in, op);
  const at::Tensor x = x_in.contiguous();
  at::Tensor residual;
  if (residual_in.has_value()) residual = residual_in->contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_hash_cpu", [&] {
    dropout_kernel<scalar_t>(x.data_ptr<scalar_t>(), residual.defined() ? residual.data_ptr<scalar_t>() : nullptr,
                             out.data_ptr<scalar_t>(), x.numel(), dropout_key(seed), a.threshold, a.scale);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) { m.impl("dropout_hash", &dropout_hash_cpu); }

}  // namespace paraformer_ext
