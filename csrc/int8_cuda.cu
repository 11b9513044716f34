// Int8 linear building blocks on CUDA. All three quantizing ops (quantize_rows, the epilogue + quantize
// fusion, LayerNorm + quantize) are one kernel: a block owns a row, stages it once as float32 in shared
// memory, reduces its statistics with block-wide reductions and writes the int8 row and its scale. Only the
// row source differs (an activation row, or the epilogue of an int32 GEMM row). The epilogue alone is a
// separate, purely element-wise kernel.
//
// The CUDA build uses --use_fast_math, which would turn a / b into an approximate reciprocal and a * b + c
// into an FMA: every step that has to match the PyTorch reference bit for bit is written with the
// explicitly rounded intrinsics (__fdiv_rn, __fmul_rn, __fadd_rn, __int2float_rn, __float2int_rn), which the
// compiler neither approximates nor contracts.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "int8.h"

namespace paraformer_ext {
namespace {

constexpr int kMaxRowThreads = 256;
constexpr int kEpilogueThreads = 256;
// Static shared memory of the row kernel (the reduction scratch) plus the cached row must fit in the 48 KiB
// every device grants without an opt-in; longer rows are recomputed from global memory on each pass.
constexpr int64_t kRowCacheBytes = 48 * 1024 - 256;
constexpr int64_t kMaxGridRows = 1 << 20;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(c10::Half v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// float(acc) * s * cs + bias, then ReLU: each operation rounded once, in the reference's order.
__device__ __forceinline__ float epilogue_value(int32_t acc, float s, float cs, float bias, bool has_bias, bool relu) {
  float y = __fmul_rn(__fmul_rn(__int2float_rn(acc), s), cs);
  if (has_bias) y = __fadd_rn(y, bias);
  if (relu) y = y < 0.f ? 0.f : y;  // keeps NaN, like torch.relu
  return y;
}

// Row sources: load VEC consecutive values of row m starting at column n (n % VEC == 0) as float.
template <typename scalar_t, int VEC>
struct ActivationSource {
  static constexpr int kVec = VEC;
  const scalar_t* __restrict__ x;
  int64_t stride;
  __device__ __forceinline__ void load(int64_t m, int64_t n, float (&v)[VEC]) const {
    scalar_t raw[VEC];
    load_vec<scalar_t, VEC>(x + m * stride + n, raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = to_float(raw[i]);
  }
};

template <int VEC>
struct EpilogueSource {
  static constexpr int kVec = VEC;
  const int32_t* __restrict__ acc;
  const float* __restrict__ row_scale;
  const float* __restrict__ col_scale;
  const float* __restrict__ bias;
  int64_t N;
  bool relu;
  __device__ __forceinline__ void load(int64_t m, int64_t n, float (&v)[VEC]) const {
    int32_t a[VEC];
    float cs[VEC], b[VEC] = {};
    load_vec<int32_t, VEC>(acc + m * N + n, a);
    load_vec<float, VEC>(col_scale + n, cs);
    if (bias != nullptr) load_vec<float, VEC>(bias + n, b);
    const float s = row_scale[m];
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = epilogue_value(a[i], s, cs[i], b[i], bias != nullptr, relu);
  }
};

struct LnParams {
  const float* __restrict__ weight;  // nullptr: no LayerNorm
  const float* __restrict__ bias;    // nullptr: zero bias
  float eps;
};

// Block-wide sum / max of one float per thread (blockDim.x a multiple of 32, at most 1024). Every thread
// gets the result; the warp partials are combined in a fixed order, so the result is deterministic.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : __fadd_rn(v, o);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int n_warps = blockDim.x >> 5;
  float r = scratch[0];
  for (int w = 1; w < n_warps; ++w) r = kMax ? fmaxf(r, scratch[w]) : __fadd_rn(r, scratch[w]);
  __syncthreads();  // scratch is reused by the next reduction
  return r;
}

__device__ __forceinline__ unsigned int block_max_bits(unsigned int v, unsigned int* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int n_warps = blockDim.x >> 5;
  unsigned int r = scratch[0];
  for (int w = 1; w < n_warps; ++w) r = max(r, scratch[w]);
  __syncthreads();
  return r;
}

// One block per row (grid-stride over rows). kCached keeps the row (N floats) in shared memory between
// passes; otherwise each pass reloads it from the source (global memory, mostly L2 hits), recomputing the
// same values. Each thread only ever touches its own columns, so the cache needs no barrier of its own.
template <typename Source, int VEC, bool kCached>
__global__ void __launch_bounds__(kMaxRowThreads)
    quantize_rows_kernel(Source src, LnParams ln, int8_t* __restrict__ q, float* __restrict__ scale, int64_t M,
                         int64_t N, int8_t* __restrict__ q_lo, float* __restrict__ scale_lo) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* row = reinterpret_cast<float*>(smem_raw);
  __shared__ float scratch[32];
  __shared__ unsigned int scratch_bits[32];
  const int64_t groups = N / VEC;
  const bool has_ln = ln.weight != nullptr;

  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    float mean = 0.f, stdev = 1.f;
    // The value of column group g after the stages so far: the source row, LayerNorm'ed once `normed`.
    auto fetch = [&](int64_t g, float (&v)[VEC], bool normed) {
      if constexpr (kCached) {
        load_vec<float, VEC>(row + g * VEC, v);
        return;
      }
      src.load(m, g * VEC, v);
      if (normed) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const int64_t n = g * VEC + i;
          float y = __fmul_rn(__fdiv_rn(__fsub_rn(v[i], mean), stdev), ln.weight[n]);
          v[i] = ln.bias != nullptr ? __fadd_rn(y, ln.bias[n]) : y;
        }
      }
    };

    unsigned int amax = 0;
    float lsum = 0.f;
    for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
      float v[VEC];
      src.load(m, g * VEC, v);
      if constexpr (kCached) store_vec<float, VEC>(row + g * VEC, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        lsum = __fadd_rn(lsum, v[i]);
        amax = max(amax, int8::abs_bits(v[i]));
      }
    }
    if (has_ln) {
      mean = __fdiv_rn(block_reduce<false>(lsum, scratch), static_cast<float>(N));
      float lsq = 0.f;
      for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
        float v[VEC];
        fetch(g, v, false);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float d = __fsub_rn(v[i], mean);
          lsq = __fadd_rn(lsq, __fmul_rn(d, d));
        }
      }
      const float var = __fdiv_rn(block_reduce<false>(lsq, scratch), static_cast<float>(N));
      stdev = __fsqrt_rn(__fadd_rn(var, ln.eps));
      amax = 0;
      for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
        float v[VEC];
        if constexpr (kCached) {
          load_vec<float, VEC>(row + g * VEC, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const int64_t n = g * VEC + i;
            const float y = __fmul_rn(__fdiv_rn(__fsub_rn(v[i], mean), stdev), ln.weight[n]);
            v[i] = ln.bias != nullptr ? __fadd_rn(y, ln.bias[n]) : y;
          }
          store_vec<float, VEC>(row + g * VEC, v);
        } else {
          fetch(g, v, true);
        }
#pragma unroll
        for (int i = 0; i < VEC; ++i) amax = max(amax, int8::abs_bits(v[i]));
      }
    }
    const float s = int8::scale_from_abs_bits(block_max_bits(amax, scratch_bits));
    if (threadIdx.x == 0) scale[m] = s;
    int8_t* qrow = q + m * N;
    // Split activations: r = v - float(q) * s (product rounded, then the difference, as the reference does),
    // kept in the row cache when there is one, else recomputed for the second pass.
    auto quantized = [&](int64_t g, float (&v)[VEC], int8_t (&o)[VEC]) {
      fetch(g, v, has_ln);
#pragma unroll
      for (int i = 0; i < VEC; ++i) o[i] = int8::quantize_value(v[i], s);
    };
    auto rounding_error = [&](float (&v)[VEC], const int8_t (&o)[VEC]) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] = __fsub_rn(v[i], __fmul_rn(__int2float_rn(o[i]), s));
    };
    unsigned int amax_lo = 0;
    for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
      float v[VEC];
      int8_t o[VEC];
      quantized(g, v, o);
      store_vec<int8_t, VEC>(qrow + g * VEC, o);
      if (q_lo != nullptr) {
        rounding_error(v, o);
        if constexpr (kCached) store_vec<float, VEC>(row + g * VEC, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) amax_lo = max(amax_lo, int8::abs_bits(v[i]));
      }
    }
    if (q_lo == nullptr) continue;
    const float s_lo = int8::scale_from_abs_bits(block_max_bits(amax_lo, scratch_bits));
    if (threadIdx.x == 0) scale_lo[m] = s_lo;
    int8_t* qlo_row = q_lo + m * N;
    for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
      float v[VEC];
      if constexpr (kCached) {
        load_vec<float, VEC>(row + g * VEC, v);
      } else {
        int8_t o[VEC];
        quantized(g, v, o);
        rounding_error(v, o);
      }
      int8_t o[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) o[i] = int8::quantize_value(v[i], s_lo);
      store_vec<int8_t, VEC>(qlo_row + g * VEC, o);
    }
  }
}

int row_threads(int64_t groups) {
  const int64_t t = (groups + 31) / 32 * 32;
  return static_cast<int>(std::max<int64_t>(32, std::min<int64_t>(kMaxRowThreads, t)));
}

template <typename Source>
void launch_quantize_rows(const Source& src, const LnParams& ln, at::Tensor& q, at::Tensor& scale, int64_t M,
                          int64_t N, cudaStream_t stream, int8_t* q_lo = nullptr, float* scale_lo = nullptr) {
  constexpr int VEC = Source::kVec;
  const int64_t groups = N / VEC;
  const int threads = row_threads(groups);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(M, kMaxGridRows));
  const int64_t cache_bytes = N * static_cast<int64_t>(sizeof(float));
  if (cache_bytes <= kRowCacheBytes) {
    quantize_rows_kernel<Source, VEC, true><<<grid, threads, cache_bytes, stream>>>(
        src, ln, q.data_ptr<int8_t>(), scale.data_ptr<float>(), M, N, q_lo, scale_lo);
  } else {
    quantize_rows_kernel<Source, VEC, false><<<grid, threads, 0, stream>>>(
        src, ln, q.data_ptr<int8_t>(), scale.data_ptr<float>(), M, N, q_lo, scale_lo);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

LnParams ln_params(const int8::LnArgs& ln) {
  LnParams p{nullptr, nullptr, 0.f};
  if (!ln.on()) return p;
  p.weight = ln.weight.data_ptr<float>();
  p.bias = ln.bias.defined() ? ln.bias.data_ptr<float>() : nullptr;
  p.eps = ln.eps;
  return p;
}

// A VEC-wide access to every row start needs the base pointer aligned, the row stride and N multiples of VEC.
bool vec_ok(const void* p, int64_t stride, int64_t N, int64_t vec, int64_t elem_bytes) {
  return N % vec == 0 && stride % vec == 0 && is_aligned(p, vec * elem_bytes);
}

// Every tensor argument has been checked to share acc's (or x's) device; this catches the remaining case of
// all of them on the CPU but an optional one on CUDA having sent the call here.
void check_on_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": the tensors are on ", t.device(), " but an optional argument is on CUDA; move them "
              "to the same device");
}

// split: q gets 2M rows (the M rows, then their rounding errors) and scale_lo their scales.
std::tuple<at::Tensor, at::Tensor> activation_quantize(const at::Tensor& x_in, const int8::LnArgs& ln,
                                                       const char* op, at::Tensor* scale_lo = nullptr) {
  check_on_cuda(x_in, op);
  const at::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = int8::last_dim_contiguous(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  int8::check_row_length(K, op, "K");
  at::Tensor q = at::empty({scale_lo ? 2 * M : M, K}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({M}, x.options().dtype(at::kFloat));
  if (scale_lo) *scale_lo = at::empty({M}, x.options().dtype(at::kFloat));
  if (M == 0) return {q, scale};
  if (K == 0) {
    if (scale_lo) scale_lo->zero_();
    return {q, scale.zero_()};
  }
  int8_t* q_lo = scale_lo ? q.data_ptr<int8_t>() + M * K : nullptr;
  float* s_lo = scale_lo ? scale_lo->data_ptr<float>() : nullptr;
  const LnParams lp = ln_params(ln);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int8::dispatch_activation(x.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int VEC = 16 / sizeof(scalar_t);
    const int64_t stride = M > 1 ? x.stride(0) : K;
    if (vec_ok(x.data_ptr(), stride, K, VEC, sizeof(scalar_t)))
      launch_quantize_rows(ActivationSource<scalar_t, VEC>{x.data_ptr<scalar_t>(), stride}, lp, q, scale, M, K, stream,
                           q_lo, s_lo);
    else
      launch_quantize_rows(ActivationSource<scalar_t, 1>{x.data_ptr<scalar_t>(), stride}, lp, q, scale, M, K, stream,
                           q_lo, s_lo);
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& x) {
  const char* op = "paraformer_ext.quantize_rows";
  int8::check_activation(x, op, "x");
  return activation_quantize(x, int8::LnArgs{}, op);
}

std::tuple<at::Tensor, at::Tensor> layer_norm_quantize_rows_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                                 const at::Tensor& bias, double eps) {
  const char* op = "paraformer_ext.layer_norm_quantize_rows";
  const int8::LnArgs ln = int8::check_activation_ln(x, weight, bias, eps, op);
  return activation_quantize(x, ln, op);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_split_cuda(const at::Tensor& x,
                                                                       const c10::optional<at::Tensor>& ln_weight,
                                                                       const c10::optional<at::Tensor>& ln_bias,
                                                                       double eps) {
  const char* op = "paraformer_ext.quantize_rows_split";
  const int8::LnArgs ln = int8::check_activation_ln(x, ln_weight, ln_bias, eps, op, "ln_weight", "ln_bias");
  at::Tensor scale_lo;
  auto [q, scale] = activation_quantize(x, ln, op, &scale_lo);
  return {q, scale, scale_lo};
}

// The epilogue's vector path reads 4 int32 accumulators (16 bytes) and the matching scales, bias and residual.
bool epilogue_vec_ok(const int8::EpilogueArgs& a, const at::Tensor& res, const at::Tensor& out) {
  constexpr int64_t V = 4;
  if (a.N % V != 0 || !is_aligned(a.acc.data_ptr(), 16) || !is_aligned(a.col_scale.data_ptr(), 16)) return false;
  if (a.bias.defined() && !is_aligned(a.bias.data_ptr(), 16)) return false;
  if (!is_aligned(out.data_ptr(), V * out.element_size())) return false;
  if (res.defined() && !vec_ok(res.data_ptr(), a.M > 1 ? res.stride(0) : a.N, a.N, V, res.element_size())) return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor> int8_linear_epilogue_quantize_cuda(
    const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
    const c10::optional<at::Tensor>& bias, bool relu, const c10::optional<at::Tensor>& ln_weight,
    const c10::optional<at::Tensor>& ln_bias, double eps) {
  const char* op = "paraformer_ext.int8_linear_epilogue_quantize";
  // Checks (devices included) come before the guard: a CPU acc reaching this kernel must fail them cleanly.
  const auto [a, ln] =
      int8::check_epilogue_quantize_args(acc, row_scale, col_scale, bias, ln_weight, ln_bias, eps, op);
  check_on_cuda(a.acc, op);
  const at::cuda::CUDAGuard guard(a.acc.device());
  int8::check_row_length(a.N, op, "N");
  at::Tensor q = at::empty({a.M, a.N}, a.acc.options().dtype(at::kChar));
  at::Tensor scale = at::empty({a.M}, a.acc.options().dtype(at::kFloat));
  if (a.M == 0) return {q, scale};
  if (a.N == 0) return {q, scale.zero_()};
  const LnParams lp = ln_params(ln);
  const float* bp = a.bias.defined() ? a.bias.data_ptr<float>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = a.N % 4 == 0 && is_aligned(a.acc.data_ptr(), 16) && is_aligned(a.col_scale.data_ptr(), 16) &&
                   (bp == nullptr || is_aligned(bp, 16));
  if (vec) {
    const EpilogueSource<4> src{a.acc.data_ptr<int32_t>(), a.row_scale.data_ptr<float>(), a.col_scale.data_ptr<float>(),
                                bp, a.N, relu};
    launch_quantize_rows(src, lp, q, scale, a.M, a.N, stream);
  } else {
    const EpilogueSource<1> src{a.acc.data_ptr<int32_t>(), a.row_scale.data_ptr<float>(), a.col_scale.data_ptr<float>(),
                                bp, a.N, relu};
    launch_quantize_rows(src, lp, q, scale, a.M, a.N, stream);
  }
  return {q, scale};
}

// Element-wise epilogue: x covers column groups of VEC, y (grid-stride) the rows, so each thread loads its
// column scales and bias once and reuses them for every row it visits.
template <typename out_t, int VEC>
__global__ void __launch_bounds__(kEpilogueThreads)
    epilogue_kernel(const int32_t* __restrict__ acc, const float* __restrict__ row_scale,
                    const float* __restrict__ col_scale, const float* __restrict__ bias,
                    const out_t* __restrict__ res, int64_t res_stride, out_t* __restrict__ out, int64_t M, int64_t N,
                    bool relu) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= N / VEC) return;
  const int64_t n = g * VEC;
  float cs[VEC], b[VEC] = {};
  load_vec<float, VEC>(col_scale + n, cs);
  if (bias != nullptr) load_vec<float, VEC>(bias + n, b);
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const float s = row_scale[m];
    int32_t a[VEC];
    load_vec<int32_t, VEC>(acc + m * N + n, a);
    float y[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) y[i] = epilogue_value(a[i], s, cs[i], b[i], bias != nullptr, relu);
    if (res != nullptr) {
      out_t r[VEC];
      load_vec<out_t, VEC>(res + m * res_stride + n, r);
#pragma unroll
      for (int i = 0; i < VEC; ++i) y[i] = __fadd_rn(y[i], to_float(r[i]));
    }
    out_t o[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = static_cast<out_t>(y[i]);  // round to nearest even, as Tensor.to()
    store_vec<out_t, VEC>(out + m * N + n, o);
  }
}

template <typename out_t, int VEC>
void launch_epilogue(const int8::EpilogueArgs& a, const at::Tensor& res, at::Tensor& out, bool relu,
                     cudaStream_t stream) {
  const int64_t groups = a.N / VEC;
  const int threads = static_cast<int>(std::min<int64_t>(kEpilogueThreads, (groups + 31) / 32 * 32));
  const int64_t gx = (groups + threads - 1) / threads;
  TORCH_CHECK(gx <= 0x7fffffff, "paraformer_ext.int8_linear_epilogue: N = ", a.N, " exceeds the CUDA grid");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(std::min<int64_t>(a.M, 65535)));
  epilogue_kernel<out_t, VEC><<<grid, threads, 0, stream>>>(
      a.acc.data_ptr<int32_t>(), a.row_scale.data_ptr<float>(), a.col_scale.data_ptr<float>(),
      a.bias.defined() ? a.bias.data_ptr<float>() : nullptr, res.defined() ? res.data_ptr<out_t>() : nullptr,
      res.defined() ? (a.M > 1 ? res.stride(0) : a.N) : 0, out.data_ptr<out_t>(), a.M, a.N, relu);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor int8_linear_epilogue_cuda(const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
                                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                     bool relu, at::ScalarType out_dtype) {
  const char* op = "paraformer_ext.int8_linear_epilogue";
  int8::check_out_dtype(out_dtype, op);
  const int8::EpilogueArgs a = int8::check_epilogue_args(acc, row_scale, col_scale, bias, op);
  const at::Tensor res = int8::check_residual(residual, a, out_dtype, op);
  check_on_cuda(a.acc, op);
  const at::cuda::CUDAGuard guard(a.acc.device());
  int8::check_row_length(a.N, op, "N");
  at::Tensor out = at::empty({a.M, a.N}, a.acc.options().dtype(out_dtype));
  if (a.M == 0 || a.N == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = epilogue_vec_ok(a, res, out);
  int8::dispatch_activation(out_dtype, op, [&](auto tag) {
    using out_t = decltype(tag);
    if (vec)
      launch_epilogue<out_t, 4>(a, res, out, relu, stream);
    else
      launch_epilogue<out_t, 1>(a, res, out, relu, stream);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) {
  m.impl("quantize_rows", &quantize_rows_cuda);
  m.impl("quantize_rows_split", &quantize_rows_split_cuda);
  m.impl("int8_linear_epilogue", &int8_linear_epilogue_cuda);
  m.impl("int8_linear_epilogue_quantize", &int8_linear_epilogue_quantize_cuda);
  m.impl("layer_norm_quantize_rows", &layer_norm_quantize_rows_cuda);
}

}  // namespace paraformer_ext
