// Counter-based dropout on CUDA: the same mask as the CPU kernel (dropout.h), one element per thread in a
// grid-stride loop. Multiplies and adds are rounded separately (no FMA contraction), as on the CPU, so both
// backends and the Python reference give the same bits.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "dropout.h"

namespace paraformer_ext {
namespace {

template <typename scalar_t>
__global__ void dropout_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ residual,
                               scalar_t* __restrict__ out, int64_t n, DropoutKey key, uint32_t threshold,
                               at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t m = dropout_keep(key, static_cast<uint64_t>(i), threshold) ? scale : acc_t(0);
    acc_t y = mul_rn(static_cast<acc_t>(x[i]), m);
    if (residual) y = add_rn(static_cast<acc_t>(residual[i]), y);
    out[i] = static_cast<scalar_t>(y);
  }
}

at::Tensor dropout_hash_cuda(const at::Tensor& x_in, double p, int64_t seed,
                             const c10::optional<at::Tensor>& residual_in) {
  const char* op = "paraformer_ext.dropout_hash";
  const DropoutArgs a = check_dropout_args(x_in, p, residual_in, op);
  const at::cuda::OptionalCUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor residual;
  if (residual_in.has_value()) residual = residual_in->contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = x.numel();
  if (n == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_hash_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dropout_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), residual.defined() ? residual.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        n, dropout_key(seed), a.threshold, static_cast<acc_t>(a.scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) { m.impl("dropout_hash", &dropout_hash_cuda); }

}  // namespace paraformer_ext
