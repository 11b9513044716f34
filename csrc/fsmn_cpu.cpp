// FSMN memory block on the CPU: one pass over x, accumulating in float (double for float64 inputs).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fsmn.h"

namespace paraformer_ext {
namespace {

template <typename scalar_t>
void fsmn_forward_kernel(Rows<scalar_t> x, const scalar_t* w, const int64_t* lengths, const Rows<scalar_t>* residual,
                         const scalar_t* bias, scalar_t* out, const FsmnShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  // Tap-major float copy of the weight so the inner loop runs contiguously over channels.
  std::vector<acc_t> wt(s.K * s.D), bf(s.D, acc_t(0));
  for (int64_t d = 0; d < s.D; ++d)
    for (int64_t j = 0; j < s.K; ++j) wt[j * s.D + d] = static_cast<acc_t>(w[d * s.K + j]);
  if (bias)
    for (int64_t d = 0; d < s.D; ++d) bf[d] = static_cast<acc_t>(bias[d]);

  const int64_t rows = s.B * s.T;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.D * s.K));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(s.D);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / s.T, t = r % s.T;
      const int64_t len = lengths ? std::min<int64_t>(std::max<int64_t>(lengths[b], 0), s.T) : s.T;
      scalar_t* o = out + r * s.D;
      const scalar_t* res = residual ? residual->row(b, t) : nullptr;
      if (t < len) {
        const scalar_t* xr = x.row(b, t);
        for (int64_t d = 0; d < s.D; ++d) acc[d] = static_cast<acc_t>(xr[d]);
        const int64_t j0 = std::max<int64_t>(0, s.left - t);
        const int64_t j1 = std::min<int64_t>(s.K, len - t + s.left);  // taps reading frames in [0, len)
        for (int64_t j = j0; j < j1; ++j) {
          const scalar_t* xs = x.row(b, t + j - s.left);
          const acc_t* wj = wt.data() + j * s.D;
          for (int64_t d = 0; d < s.D; ++d) acc[d] += wj[d] * static_cast<acc_t>(xs[d]);
        }
      } else {  // masked frame: only residual and bias survive
        for (int64_t d = 0; d < s.D; ++d) acc[d] = acc_t(0);
      }
      // Summation order: (residual + memory) + bias, the order the encoder adds them in.
      if (res)
        for (int64_t d = 0; d < s.D; ++d) acc[d] = static_cast<acc_t>(res[d]) + acc[d];
      for (int64_t d = 0; d < s.D; ++d) o[d] = static_cast<scalar_t>(acc[d] + bf[d]);
    }
  });
}

template <typename scalar_t>
void fsmn_weight_grad_kernel(const scalar_t* g, const scalar_t* x, const int64_t* lengths, at::opmath_type<scalar_t>* gw,
                             const FsmnShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  // Channels are independent: split them across threads, each owning gw[d0:d1, :] outright.
  const int64_t chunk = 16;
  const int64_t n_chunks = (s.D + chunk - 1) / chunk;
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t d0 = c * chunk, d1 = std::min(s.D, d0 + chunk), nd = d1 - d0;
      std::vector<acc_t> local(nd * s.K, acc_t(0));
      for (int64_t b = 0; b < s.B; ++b) {
        const int64_t len = lengths ? std::min<int64_t>(std::max<int64_t>(lengths[b], 0), s.T) : s.T;
        for (int64_t t = 0; t < len; ++t) {
          const scalar_t* gr = g + (b * s.T + t) * s.D + d0;
          const int64_t j0 = std::max<int64_t>(0, s.left - t);
          const int64_t j1 = std::min<int64_t>(s.K, len - t + s.left);
          for (int64_t j = j0; j < j1; ++j) {
            const scalar_t* xs = x + (b * s.T + t + j - s.left) * s.D + d0;
            for (int64_t k = 0; k < nd; ++k)
              local[k * s.K + j] += static_cast<acc_t>(gr[k]) * static_cast<acc_t>(xs[k]);
          }
        }
      }
      for (int64_t k = 0; k < nd; ++k)
        for (int64_t j = 0; j < s.K; ++j) gw[(d0 + k) * s.K + j] = local[k * s.K + j];
    }
  });
}

at::Tensor fsmn_memory_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, const c10::optional<at::Tensor>& lengths,
                           int64_t left, const c10::optional<at::Tensor>& residual_in,
                           const c10::optional<at::Tensor>& bias_in) {
  const char* op = "paraformer_ext.fsmn_memory";
  const auto [s, len] = check_fsmn_forward_args(x_in, weight_in, lengths, left, residual_in, bias_in, op);
  const at::Tensor x = channels_contiguous(x_in);
  const at::Tensor w = weight_in.contiguous();
  at::Tensor residual, bias;
  if (residual_in.has_value()) residual = channels_contiguous(*residual_in);
  if (bias_in.has_value()) bias = bias_in->contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fsmn_memory_cpu", [&] {
    Rows<scalar_t> xr{x.data_ptr<scalar_t>(), x.stride(0), x.stride(1)};
    Rows<scalar_t> rr{residual.defined() ? residual.data_ptr<scalar_t>() : nullptr,
                      residual.defined() ? residual.stride(0) : 0, residual.defined() ? residual.stride(1) : 0};
    fsmn_forward_kernel<scalar_t>(xr, w.data_ptr<scalar_t>(), len.defined() ? len.data_ptr<int64_t>() : nullptr,
                                  residual.defined() ? &rr : nullptr, bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                                  out.data_ptr<scalar_t>(), s);
  });
  return out;
}

at::Tensor fsmn_memory_weight_grad_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                       const c10::optional<at::Tensor>& lengths, int64_t left, int64_t kernel_size) {
  const char* op = "paraformer_ext.fsmn_memory_weight_grad";
  const auto [s, len] = check_fsmn_weight_grad_args(grad_in, x_in, lengths, left, kernel_size, op);
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous();
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gw = at::zeros({s.D, s.K}, x.options().dtype(acc_dtype));
  if (x.numel() == 0) return gw.to(x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fsmn_memory_weight_grad_cpu", [&] {
    fsmn_weight_grad_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                      len.defined() ? len.data_ptr<int64_t>() : nullptr,
                                      gw.data_ptr<at::opmath_type<scalar_t>>(), s);
  });
  return gw.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) {
  m.impl("fsmn_memory", &fsmn_memory_cpu);
  m.impl("fsmn_memory_weight_grad", &fsmn_memory_weight_grad_cpu);
}

}  // namespace paraformer_ext
