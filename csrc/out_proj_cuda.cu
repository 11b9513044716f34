// Output projection + log_softmax + argmax on CUDA. Per block of rows and chunk of vocabulary columns,
// cuBLAS (at::addmm_out, or cuBLASLt's int8 GEMM through at::_int_mm_out) writes the logits tile into one
// reusable buffer sized to stay in L2; our kernel then reads it back once (a warp per row, one exp per
// logit) and folds it into the row's running (max, argmax, sum of exp). Nothing of size M x V is allocated.
#include <ATen/Dispatch.h>
#include <cuda_runtime.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <type_traits>

#include "cuda_utils.cuh"
#include "int8.h"
#include "out_proj.h"

namespace paraformer_ext {
namespace {

constexpr int kWarpsPerBlock = 8;  // one row per warp
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kIntMmMinRows = 17;  // cuBLASLt int8 GEMM through at::_int_mm needs more than 16 rows

__device__ __forceinline__ LseState<float> warp_combine(LseState<float> st) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const LseState<float> o{__shfl_xor_sync(kFullMask, st.m, off), __shfl_xor_sync(kFullMask, st.s, off),
                     __shfl_xor_sync(kFullMask, st.i, off)};
    st = lse_combine(st, o);  // symmetric, so every lane ends with the same state
  }
  return st;
}

// Fold the (rows, cols) tile (row stride ld) into the running states run_m / run_s / run_i of its rows.
// tile_t int32_t: int8 GEMM accumulators, dequantized as ((float(acc) * xs[r]) * ws[j]) + bias[j] with each
// step rounded (the _rn intrinsics keep nvcc from contracting them into FMAs), as the reference does.
// first: no previous state; last: write logp = -log(sum) instead of the state.
template <typename tile_t>
__global__ void lse_update_kernel(const tile_t* __restrict__ tile, int64_t ld, int64_t rows, int64_t cols,
                                  int64_t col0, const float* __restrict__ xs, const float* __restrict__ ws,
                                  const float* __restrict__ bias, float* __restrict__ run_m,
                                  double* __restrict__ run_s, int64_t* __restrict__ run_i, float* __restrict__ logp,
                                  bool first, bool last) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // uniform per warp: the shuffles below see full warps
  const tile_t* row = tile + r * ld;
  float xsr = 0.0f;
  if constexpr (std::is_same_v<tile_t, int32_t>) xsr = xs[r];
  LseState<float> st{-INFINITY, 0.0f, -1};
  for (int64_t j = lane; j < cols; j += 32) {
    float v;
    if constexpr (std::is_same_v<tile_t, int32_t>) {
      v = __fmul_rn(__fmul_rn(__int2float_rn(row[j]), xsr), ws[j]);
      if (bias != nullptr) v = __fadd_rn(v, bias[j]);
    } else {
      v = static_cast<float>(row[j]);
    }
    // Each lane sees its columns in increasing order, so strict > keeps the first of equal maxima.
    if (st.i < 0 || v > st.m || (v != v && st.m == st.m)) {
      st.s = st.i < 0 ? 1.0f : st.s * lse_rescale(st.m, v) + 1.0f;
      st.m = v;
      st.i = col0 + j;
    } else {
      st.s += v == st.m ? 1.0f : __expf(v - st.m);
    }
  }
  st = warp_combine(st);
  if (lane != 0) return;
  LseState<double> acc{st.m, static_cast<double>(st.s), st.i};
  if (!first) acc = lse_combine(LseState<double>{run_m[r], run_s[r], run_i[r]}, st);  // earlier columns first on ties
  run_i[r] = acc.i;
  if (last) {
    logp[r] = lse_logp(acc);
  } else {
    run_m[r] = acc.m;
    run_s[r] = acc.s;
  }
}

// Per-row int8 by the one rule of int8.h (ops/int8.py's quantize_rows), a warp per row: the max of
// int8::abs_bits over the row, then every value with the row's scale.
template <typename scalar_t>
__global__ void quantize_rows_kernel(const scalar_t* __restrict__ x, int64_t sx, int64_t rows, int64_t D,
                                     int8_t* __restrict__ q, float* __restrict__ scale) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;
  const scalar_t* xr = x + r * sx;
  unsigned int amax = 0;
  for (int64_t d = lane; d < D; d += 32) amax = max(amax, int8::abs_bits(static_cast<float>(xr[d])));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = max(amax, __shfl_xor_sync(kFullMask, amax, off));
  const float s = int8::scale_from_abs_bits(amax);
  int8_t* qr = q + r * D;
  for (int64_t d = lane; d < D; d += 32) qr[d] = int8::quantize_value(static_cast<float>(xr[d]), s);
  if (lane == 0) scale[r] = s;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

std::tuple<at::Tensor, at::Tensor> out_proj_argmax_cuda(const at::Tensor& x_in, const at::Tensor& weight,
                                                        const c10::optional<at::Tensor>& bias,
                                                        const c10::optional<at::Tensor>& weight_scale,
                                                        int64_t chunk) {
  const char* op = "paraformer_ext.out_proj_argmax";
  const OutProjShape s = check_out_proj_args(x_in, weight, bias, weight_scale, chunk, op);
  // The GEMMs below write into our buffers (out= ops), which autograd refuses for inputs that require grad
  // (an nn.Linear's weight outside no_grad); the op is inference only, so call them below autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(!s.int8 || s.D % 8 == 0, op, ": int8 weights on CUDA need D to be a multiple of 8 (cuBLASLt's int8 ",
              "GEMM), got D = ", s.D, "; pad x and weight with zero columns");
  const at::cuda::OptionalCUDAGuard guard(x_in.device());
  at::Tensor ids = at::empty({s.M}, x_in.options().dtype(at::kLong));
  at::Tensor logp = at::empty({s.M}, x_in.options().dtype(at::kFloat));
  if (s.M == 0) return {ids, logp};
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // The tile should still be in L2 when the reduction reads it back: half of L2 for it, the rest for the
  // GEMM's operands.
  int l2 = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, x.device().index()));
  const int64_t budget = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(l2) / 2, 1 << 20), 64 << 20);
  // int8 chunks must be multiples of 8 columns; only the last one can be ragged, and that one is padded.
  const int64_t chunk_eff = s.int8 && chunk > 0 ? round_up(chunk, 8) : chunk;
  const OutProjPlan p = plan_out_proj(s, chunk_eff, 2048, budget, 32, 16384);
  const int64_t gemm_rows = s.int8 ? std::max(p.rows, kIntMmMinRows) : p.rows;
  const int64_t tile_cols = s.int8 ? round_up(p.cols, 8) : p.cols;
  const auto opts = x.options();
  at::Tensor tile = at::empty({gemm_rows * tile_cols}, opts.dtype(s.int8 ? at::kInt : x.scalar_type()));
  at::Tensor bias_buf = at::empty({p.cols}, opts.dtype(s.int8 ? at::kFloat : x.scalar_type()));
  at::Tensor run_m = at::empty({p.rows}, opts.dtype(at::kFloat));
  at::Tensor run_s = at::empty({p.rows}, opts.dtype(at::kDouble));
  at::Tensor scale_buf, xq, xs, w_tail;
  if (s.int8) {
    scale_buf = at::empty({p.cols}, opts.dtype(at::kFloat));
    xq = at::zeros({gemm_rows, s.D}, opts.dtype(at::kChar));
    xs = at::empty({p.rows}, opts.dtype(at::kFloat));
    const int64_t last_v0 = (s.V - 1) / p.cols * p.cols, last_c = s.V - last_v0;
    if (last_c % 8 != 0) {  // zero-padded copy of the ragged last chunk (at most chunk x D bytes)
      w_tail = at::zeros({round_up(last_c, 8), s.D}, opts.dtype(at::kChar));
      w_tail.narrow(0, 0, last_c).copy_(weight.narrow(0, last_v0, last_c));
    }
  }

  for (int64_t m0 = 0; m0 < s.M; m0 += p.rows) {
    const int64_t mb = std::min(p.rows, s.M - m0);
    const at::Tensor xb = x.narrow(0, m0, mb);
    const int64_t gm = s.int8 ? std::max(mb, kIntMmMinRows) : mb;
    if (s.int8) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "out_proj_quantize_cuda", [&] {
        quantize_rows_kernel<scalar_t><<<blocks_for(mb), kWarpsPerBlock * 32, 0, stream>>>(
            xb.data_ptr<scalar_t>(), xb.stride(0), mb, s.D, xq.data_ptr<int8_t>(), xs.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (gm > mb) xq.narrow(0, mb, gm - mb).zero_();  // padding rows: zeros, never read back
    }
    float* rm = run_m.data_ptr<float>();
    double* rs = run_s.data_ptr<double>();
    int64_t* ri = ids.data_ptr<int64_t>() + m0;  // the running argmax lives in ids
    float* lp = logp.data_ptr<float>() + m0;
    for (int64_t v0 = 0; v0 < s.V; v0 += p.cols) {
      const int64_t c = std::min(p.cols, s.V - v0);
      const bool first = v0 == 0, last = v0 + c == s.V;
      at::Tensor bc;
      if (bias.has_value()) bc = vector_chunk(*bias, v0, c, bias_buf);
      if (s.int8) {
        const int64_t cp = round_up(c, 8);
        const at::Tensor wc = cp == c ? weight_chunk(weight, v0, c) : w_tail;
        at::Tensor t2 = tile.narrow(0, 0, gm * cp).view({gm, cp});
        at::_int_mm_out(t2, xq.narrow(0, 0, gm), wc.t());
        const at::Tensor sc = vector_chunk(*weight_scale, v0, c, scale_buf);
        lse_update_kernel<int32_t><<<blocks_for(mb), kWarpsPerBlock * 32, 0, stream>>>(
            t2.data_ptr<int32_t>(), cp, mb, c, v0, xs.data_ptr<float>(), sc.data_ptr<float>(),
            bc.defined() ? bc.data_ptr<float>() : nullptr, rm, rs, ri, lp, first, last);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        at::Tensor t2 = tile.narrow(0, 0, mb * c).view({mb, c});
        const at::Tensor wc = weight_chunk(weight, v0, c);
        // Same GEMM as F.linear (addmm, rounded once to x's dtype), on a (rows, chunk) slice of its output.
        if (bc.defined())
          at::addmm_out(t2, bc, xb, wc.t());
        else
          at::mm_out(t2, xb, wc.t());
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "out_proj_reduce_cuda", [&] {
          lse_update_kernel<scalar_t><<<blocks_for(mb), kWarpsPerBlock * 32, 0, stream>>>(
              t2.data_ptr<scalar_t>(), c, mb, c, v0, nullptr, nullptr, nullptr, rm, rs, ri, lp, first, last);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    }
  }
  return {ids, logp};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) { m.impl("out_proj_argmax", &out_proj_argmax_cuda); }

}  // namespace paraformer_ext
