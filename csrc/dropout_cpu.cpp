// Counter-based dropout on the CPU: out = (residual +) x * (keep(seed, i) ? 1 / (1 - p) : 0), element-wise in
// float (double for float64). The hash loop has no branches, so the compiler vectorizes it.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dropout.h"

namespace paraformer_ext {
namespace {

template <typename scalar_t>
void dropout_kernel(const scalar_t* x, const scalar_t* residual, scalar_t* out, int64_t n, DropoutKey key,
                    uint32_t threshold, double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t m = dropout_keep(key, static_cast<uint64_t>(i), threshold) ? scale : acc_t(0);
      const acc_t y = static_cast<acc_t>(x[i]) * m;
      out[i] = static_cast<scalar_t>(residual ? static_cast<acc_t>(residual[i]) + y : y);
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
