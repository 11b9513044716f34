// Int8 linear building blocks on the CPU. Every op works one row at a time: a row (a few thousand floats at
// most) is staged once in a thread-local float buffer, so the later passes over it (LayerNorm moments,
// absmax, quantization) read the L1/L2 cache instead of memory.
//
// Bit-exactness with the PyTorch references rests on two things: this file is compiled with
// -ffp-contract=off (CMakeLists.txt), since GCC would otherwise fuse the epilogue's multiply and add into
// an FMA and change the last bit (tests/test_int8.py fails without it); and every division and rounding is
// the IEEE one the references use (vdivps, nearbyint in the default round-half-to-even mode).
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "int8.h"

namespace paraformer_ext {
namespace {

constexpr int kLanes = 16;  // independent accumulators: lets the compiler vectorise a float sum it may not reorder

// --- conversions between a row of the input/output dtype and float ----------------------------------------

inline void widen(const float* x, float* out, int64_t n) { std::memcpy(out, x, n * sizeof(float)); }

inline void widen(const c10::Half* x, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
#endif
  for (; i < n; ++i) out[i] = static_cast<float>(x[i]);
}

inline void widen(const c10::BFloat16* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(x[i].x) << 16;  // bfloat16 is the top half of a float32
    std::memcpy(out + i, &u, sizeof(u));
  }
}

// float -> 16-bit with round-to-nearest-even, bit-identical to c10's scalar conversions (and so to
// Tensor.to()), which would otherwise run as a scalar loop of bit manipulations.
inline void narrow(const float* y, c10::Half* out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(y + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) out[i] = c10::Half(y[i]);
}

inline void narrow(const float* y, c10::BFloat16* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, y + i, sizeof(u));
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    out[i].x = nan ? uint16_t(0x7fc0) : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// --- row passes ---------------------------------------------------------------------------------------------

inline double lane_sum(const double (&acc)[kLanes], double tail) {
  for (int j = 0; j < kLanes; ++j) tail += acc[j];
  return tail;
}

struct LnPtrs {
  const float* w = nullptr;
  const float* b = nullptr;
  float eps = 0.f;
};

// h = (h - mean) / sqrt(var + eps) * w + b over the row, mean and biased variance accumulated in double (two
// passes over the cached row) so they are at least as accurate as F.layer_norm's float32 statistics.
inline void layer_norm_row(float* h, int64_t n, const LnPtrs& ln) {
  double acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += h[i + j];
  double tail = 0;
  for (; i < n; ++i) tail += h[i];
  const double mean = lane_sum(acc, tail) / static_cast<double>(n);

  double sq[kLanes] = {0};
  for (i = 0; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double d = h[i + j] - mean;
      sq[j] += d * d;
    }
  tail = 0;
  for (; i < n; ++i) tail += (h[i] - mean) * (h[i] - mean);
  const double var = lane_sum(sq, tail) / static_cast<double>(n);

  const float mean_f = static_cast<float>(mean);
  const float std_f = std::sqrt(static_cast<float>(var) + ln.eps);
  for (i = 0; i < n; ++i) h[i] = (h[i] - mean_f) / std_f * ln.w[i];
  if (ln.b)
    for (i = 0; i < n; ++i) h[i] = h[i] + ln.b[i];
}

// y = act(float(acc) * s * col_scale + bias) + res, rounded after every operation, in this order (one loop;
// the options are template flags so that it stays branch-free and vectorised).
template <bool kBias, bool kRelu, bool kRes>
inline void epilogue_row_t(const int32_t* acc, float s, const float* cs, const float* bias, const float* res,
                           float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(acc[i]) * s * cs[i];
    if constexpr (kBias) v = v + bias[i];
    if constexpr (kRelu) v = v < 0.f ? 0.f : v;  // keeps NaN, like torch.relu
    if constexpr (kRes) v = v + res[i];
    y[i] = v;
  }
}

inline void epilogue_row(const int32_t* acc, float s, const float* cs, const float* bias, bool relu, const float* res,
                         float* y, int64_t n) {
  const int variant = (bias ? 4 : 0) | (relu ? 2 : 0) | (res ? 1 : 0);
  switch (variant) {
    case 0: return epilogue_row_t<false, false, false>(acc, s, cs, bias, res, y, n);
    case 1: return epilogue_row_t<false, false, true>(acc, s, cs, bias, res, y, n);
    case 2: return epilogue_row_t<false, true, false>(acc, s, cs, bias, res, y, n);
    case 3: return epilogue_row_t<false, true, true>(acc, s, cs, bias, res, y, n);
    case 4: return epilogue_row_t<true, false, false>(acc, s, cs, bias, res, y, n);
    case 5: return epilogue_row_t<true, false, true>(acc, s, cs, bias, res, y, n);
    case 6: return epilogue_row_t<true, true, false>(acc, s, cs, bias, res, y, n);
    default: return epilogue_row_t<true, true, true>(acc, s, cs, bias, res, y, n);
  }
}

// --- row sources for the quantizing driver ------------------------------------------------------------------

template <typename scalar_t>
struct ActivationRows {
  const scalar_t* p;
  int64_t stride;
  void operator()(int64_t m, float* h, int64_t n) const { widen(p + m * stride, h, n); }
};

struct EpilogueRows {
  const int32_t* acc;
  const float* row_scale;
  const float* col_scale;
  const float* bias;
  bool relu;
  // res: the row's residual as float (nullptr: none).
  void operator()(int64_t m, float* h, int64_t n, const float* res = nullptr) const {
    epilogue_row(acc + m * n, row_scale[m], col_scale, bias, relu, res, h, n);
  }
};

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n)); }

// The rounding error of a quantized row, h - float(q) * s, in place (product rounded, then the difference,
// as the reference computes it).
inline void residual_row(float* h, int64_t n, const int8_t* q, float s) {
  for (int64_t i = 0; i < n; ++i) h[i] = h[i] - static_cast<float>(q[i]) * s;
}

// Per row: stage it as float, LayerNorm it (when ln.w), then absmax and quantize. With q_lo (split
// activations), the row's rounding error is quantized again into q_lo with its own scale.
template <typename Source>
void quantize_rows_kernel(const Source& src, int64_t M, int64_t N, const LnPtrs& ln, int8_t* q, float* scale,
                          int8_t* q_lo = nullptr, float* scale_lo = nullptr) {
  if (N == 0) {  // an empty row has absmax 0, hence scale 0
    std::fill(scale, scale + M, 0.f);
    if (scale_lo) std::fill(scale_lo, scale_lo + M, 0.f);
    return;
  }
  at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
    std::vector<float> h(N);
    for (int64_t m = begin; m < end; ++m) {
      src(m, h.data(), N);
      if (ln.w) layer_norm_row(h.data(), N, ln);
      const float s = int8::row_scale(h.data(), N);
      scale[m] = s;
      int8::quantize_row(h.data(), N, s, q + m * N);
      if (q_lo) {
        residual_row(h.data(), N, q + m * N, s);
        const float s_lo = int8::row_scale(h.data(), N);
        scale_lo[m] = s_lo;
        int8::quantize_row(h.data(), N, s_lo, q_lo + m * N);
      }
    }
  });
}

template <typename out_t>
void epilogue_kernel(const EpilogueRows& src, const out_t* res, int64_t res_stride, out_t* out, int64_t M,
                     int64_t N) {
  at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
    constexpr bool kFloatOut = std::is_same_v<out_t, float>;
    std::vector<float> buf(kFloatOut ? 0 : N), rbuf(res && !kFloatOut ? N : 0);
    for (int64_t m = begin; m < end; ++m) {
      float* y = kFloatOut ? reinterpret_cast<float*>(out + m * N) : buf.data();
      const float* rf = nullptr;
      if (res) {
        const out_t* r = res + m * res_stride;
        if constexpr (kFloatOut) {
          rf = r;
        } else {
          widen(r, rbuf.data(), N);
          rf = rbuf.data();
        }
      }
      src(m, y, N, rf);
      if constexpr (!kFloatOut) narrow(y, out + m * N, N);
    }
  });
}

LnPtrs ln_ptrs(const int8::LnArgs& ln) {
  LnPtrs p;
  if (!ln.on()) return p;
  p.w = ln.weight.data_ptr<float>();
  p.b = ln.bias.defined() ? ln.bias.data_ptr<float>() : nullptr;
  p.eps = ln.eps;
  return p;
}

EpilogueRows epilogue_rows(const int8::EpilogueArgs& a, bool relu) {
  return EpilogueRows{a.acc.data_ptr<int32_t>(), a.row_scale.data_ptr<float>(), a.col_scale.data_ptr<float>(),
                      a.bias.defined() ? a.bias.data_ptr<float>() : nullptr, relu};
}

std::tuple<at::Tensor, at::Tensor> activation_quantize(const at::Tensor& x_in, const int8::LnArgs& ln,
                                                       const char* op) {
  const at::Tensor x = int8::last_dim_contiguous(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  int8::check_row_length(K, op, "K");
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({M}, x.options().dtype(at::kFloat));
  if (M == 0) return {q, scale};
  const LnPtrs lp = ln_ptrs(ln);
  int8::dispatch_activation(x.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    const ActivationRows<scalar_t> src{x.data_ptr<scalar_t>(), x.stride(0)};
    quantize_rows_kernel(src, M, K, lp, q.data_ptr<int8_t>(), scale.data_ptr<float>());
  });
  return {q, scale};
}

// q (2M, K): the M high rows, then the M rows of their rounding errors; one integer GEMM then covers both.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_split_cpu(const at::Tensor& x_in,
                                                                      const c10::optional<at::Tensor>& ln_weight,
                                                                      const c10::optional<at::Tensor>& ln_bias,
                                                                      double eps) {
  const char* op = "paraformer_ext.quantize_rows_split";
  const int8::LnArgs ln = int8::check_activation_ln(x_in, ln_weight, ln_bias, eps, op, "ln_weight", "ln_bias");
  const at::Tensor x = int8::last_dim_contiguous(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  int8::check_row_length(K, op, "K");
  at::Tensor q = at::empty({2 * M, K}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({M}, x.options().dtype(at::kFloat));
  at::Tensor scale_lo = at::empty({M}, x.options().dtype(at::kFloat));
  if (M == 0) return {q, scale, scale_lo};
  const LnPtrs lp = ln_ptrs(ln);
  int8::dispatch_activation(x.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    const ActivationRows<scalar_t> src{x.data_ptr<scalar_t>(), x.stride(0)};
    quantize_rows_kernel(src, M, K, lp, q.data_ptr<int8_t>(), scale.data_ptr<float>(), q.data_ptr<int8_t>() + M * K,
                         scale_lo.data_ptr<float>());
  });
  return {q, scale, scale_lo};
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x) {
  const char* op = "paraformer_ext.quantize_rows";
  int8::check_activation(x, op, "x");
  return activation_quantize(x, int8::LnArgs{}, op);
}

std::tuple<at::Tensor, at::Tensor> layer_norm_quantize_rows_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                                const at::Tensor& bias, double eps) {
  const char* op = "paraformer_ext.layer_norm_quantize_rows";
  const int8::LnArgs ln = int8::check_activation_ln(x, weight, bias, eps, op);
  return activation_quantize(x, ln, op);
}

at::Tensor int8_linear_epilogue_cpu(const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
                                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                    bool relu, at::ScalarType out_dtype) {
  const char* op = "paraformer_ext.int8_linear_epilogue";
  int8::check_out_dtype(out_dtype, op);
  const int8::EpilogueArgs a = int8::check_epilogue_args(acc, row_scale, col_scale, bias, op);
  const at::Tensor res = int8::check_residual(residual, a, out_dtype, op);
  int8::check_row_length(a.N, op, "N");
  at::Tensor out = at::empty({a.M, a.N}, a.acc.options().dtype(out_dtype));
  if (a.M == 0 || a.N == 0) return out;
  const EpilogueRows src = epilogue_rows(a, relu);
  int8::dispatch_activation(out_dtype, op, [&](auto tag) {
    using out_t = decltype(tag);
    epilogue_kernel<out_t>(src, res.defined() ? res.data_ptr<out_t>() : nullptr, res.defined() ? res.stride(0) : 0,
                           out.data_ptr<out_t>(), a.M, a.N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> int8_linear_epilogue_quantize_cpu(
    const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
    const c10::optional<at::Tensor>& bias, bool relu, const c10::optional<at::Tensor>& ln_weight,
    const c10::optional<at::Tensor>& ln_bias, double eps) {
  const char* op = "paraformer_ext.int8_linear_epilogue_quantize";
  const auto [a, ln] =
      int8::check_epilogue_quantize_args(acc, row_scale, col_scale, bias, ln_weight, ln_bias, eps, op);
  int8::check_row_length(a.N, op, "N");
  at::Tensor q = at::empty({a.M, a.N}, a.acc.options().dtype(at::kChar));
  at::Tensor scale = at::empty({a.M}, a.acc.options().dtype(at::kFloat));
  if (a.M == 0) return {q, scale};
  quantize_rows_kernel(epilogue_rows(a, relu), a.M, a.N, ln_ptrs(ln), q.data_ptr<int8_t>(), scale.data_ptr<float>());
  return {q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) {
  m.impl("quantize_rows", &quantize_rows_cpu);
  m.impl("quantize_rows_split", &quantize_rows_split_cpu);
  m.impl("int8_linear_epilogue", &int8_linear_epilogue_cpu);
  m.impl("int8_linear_epilogue_quantize", &int8_linear_epilogue_quantize_cpu);
  m.impl("layer_norm_quantize_rows", &layer_norm_quantize_rows_cpu);
}

}  // namespace paraformer_ext
