// Output projection + log_softmax + argmax on the CPU. Per block of rows and chunk of vocabulary columns the
// logits tile comes from torch's GEMM (MKL/oneDNN) into one small reusable buffer; our reduction then folds
// the tile, while it is still in cache, into a running (max, argmax, sum of exp) per row. Nothing of size
// M x V is ever allocated.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdint>

#include "int8.h"
#include "out_proj.h"

namespace paraformer_ext {
namespace {

constexpr int kLanes = 16;  // one AVX-512 register of floats; plain arrays so the compiler vectorises them
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kMinRowsPerThread = 128;  // below this a row block's GEMM is bound by reading the weight
constexpr int64_t kMinParallelMacs = int64_t(1) << 24;

// exp(x) for x <= 0 (NaN passes through) as straight-line arithmetic the compiler can vectorise, unlike
// std::exp. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the degree-7 Taylor polynomial of e^r
// (truncation error < 6e-9 relative, below float's rounding). x < -87 gives 0: those terms are below 2e-38
// while the sum they are added to is >= 1.
inline float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer n held in the low mantissa bits of t.
  const float t = xc * 1.44269504f + 12582912.0f;
  const float n = t - 12582912.0f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // t's bits are 0x4B400000 + n; move n + 127 into the exponent field to get 2^n (n >= -126: normal).
  const uint32_t two_n = (std::bit_cast<uint32_t>(t) - 0x4B400000u + 127u) << 23;
  const float res = p * std::bit_cast<float>(two_n);
  return x < -87.0f ? 0.0f : res;
}

// The state of one tile row l[0, n) whose first column is col0, in passes the compiler vectorises over a
// row that sits in L1/L2: the max, the sum of exp(l - max), then the first column holding the max. NaNs are
// skipped by the max but make the sum NaN (nothing else can: v == max counts 1, so no inf - inf), which is
// how a NaN row is detected without a flag in the hot loops.
LseState<float> row_state(const float* l, int64_t n, int64_t col0) {
  float m = kNegInf;
  // The reduction order is free: without NaNs the max is exact, and with one the sum below is NaN anyway.
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = l[i] > m ? l[i] : m;

  float acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = 0.0f;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const float v = l[i + k];
      acc[k] += v == m ? 1.0f : exp_nonpos(v - m);
    }
  float s = 0.0f;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  for (; i < n; ++i) s += l[i] == m ? 1.0f : exp_nonpos(l[i] - m);

  int64_t j = 0;
  if (s != s) {  // a NaN: it is the row's max (torch.argmax's rule), the first one wins
    while (!(l[j] != l[j])) ++j;
    return {l[j], l[j], col0 + j};
  }
  // The first column equal to the max (all -inf: column 0); blocks of kLanes first, then the exact column.
  for (; j + kLanes <= n; j += kLanes) {
    int hit = 0;
    for (int k = 0; k < kLanes; ++k) hit |= l[j + k] == m;
    if (hit) break;
  }
  while (l[j] != m) ++j;
  return {m, s, col0 + j};
}

// int8 logits in the reference's order, each step rounded: ((float(acc) * x_scale) * w_scale) + bias. The
// bias is added in a second loop so the compiler cannot contract the last multiply-add into an FMA.
void dequantize_row(const int32_t* acc, float xs, const float* ws, const float* bias, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(acc[j]) * xs * ws[j];
  if (bias)
    for (int64_t j = 0; j < n; ++j) out[j] += bias[j];
}

// Per-row int8 of x by the one rule of int8.h (ops/int8.py's quantize_rows), so that the int8 logits are
// those of an int8 linear.
template <typename scalar_t>
void quantize_rows(const scalar_t* x, int64_t sx, int64_t rows, int64_t D, int8_t* q, float* scale) {
  for (int64_t r = 0; r < rows; ++r) {
    scale[r] = int8::row_scale(x + r * sx, D);
    int8::quantize_row(x + r * sx, D, scale[r], q + r * D);
  }
}

// Bytes of float32 logits tile per thread: the tile a thread's GEMM writes is read back by the same thread,
// so it should stay in that core's L2.
int64_t cpu_tile_budget() {
  int64_t l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  if (l2 <= 0) l2 = 1 << 20;
  return std::min<int64_t>(std::max<int64_t>(l2, 256 << 10), 4 << 20);
}

// Fold one (mb, c) tile into the running states of its rows.
template <typename tile_t>
void reduce_tile(const tile_t* tile, int64_t mb, int64_t c, int64_t v0, const float* xs, const float* ws,
                 const float* bias, float* buf, LseState<double>* state) {
  for (int64_t r = 0; r < mb; ++r) {
    const tile_t* row = tile + r * c;
    const float* l;
    if constexpr (std::is_same_v<tile_t, float>) {
      l = row;
    } else if constexpr (std::is_same_v<tile_t, int32_t>) {
      dequantize_row(row, xs[r], ws, bias, buf, c);
      l = buf;
    } else {
      for (int64_t j = 0; j < c; ++j) buf[j] = static_cast<float>(row[j]);
      l = buf;
    }
    state[r] = lse_combine(state[r], row_state(l, c, v0));
  }
}

std::tuple<at::Tensor, at::Tensor> out_proj_argmax_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                                                       const c10::optional<at::Tensor>& bias,
                                                       const c10::optional<at::Tensor>& weight_scale,
                                                       int64_t chunk) {
  const char* op = "paraformer_ext.out_proj_argmax";
  const OutProjShape s = check_out_proj_args(x_in, weight, bias, weight_scale, chunk, op);
  // The GEMMs below write into our buffers (out= ops), which autograd refuses for inputs that require grad
  // (an nn.Linear's weight outside no_grad); the op is inference only, so call them below autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor ids = at::empty({s.M}, x_in.options().dtype(at::kLong));
  at::Tensor logp = at::empty({s.M}, x_in.options().dtype(at::kFloat));
  if (s.M == 0) return {ids, logp};
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();

  // Work items are (row block, vocabulary part); each thread runs its items start to end with its own tile
  // and single-threaded GEMMs, so the tile never leaves the core that wrote it and the whole op is one
  // parallel region (no barrier per chunk). Every row block streams the whole weight (its part of it) once,
  // so blocks of few rows make the GEMM bound by reading the weight: with few rows the rows stay together
  // and the vocabulary is split among the threads instead; the parts' states are merged at the end
  // (lse_combine does not depend on the order). Many rows: a multiple of `threads` blocks of equal size.
  // A small product (one decoder step) is not worth waking the other threads for.
  const bool small = s.M * s.V * s.D < kMinParallelMacs;
  const int64_t threads = small ? 1 : std::max(1, at::get_num_threads());
  OutProjPlan p = plan_out_proj(s, chunk, 1024, cpu_tile_budget(), 16, 8192);
  const int64_t n_chunks = (s.V + p.cols - 1) / p.cols;
  int64_t n_blocks = (s.M + p.rows - 1) / p.rows, parts = 1;
  if (n_blocks < threads && s.M < threads * kMinRowsPerThread)
    parts = std::min(n_chunks, (threads + n_blocks - 1) / n_blocks);
  else
    n_blocks = (std::max(n_blocks, threads) + threads - 1) / threads * threads;
  p.rows = (s.M + n_blocks - 1) / n_blocks;  // <= the budget's rows, and blocks of (nearly) equal size
  n_blocks = (s.M + p.rows - 1) / p.rows;
  const auto opts = x.options();
  // Row states through torch's allocator like every other buffer here, so memory profiles see them.
  const int64_t n_states = parts * s.M, state_bytes = static_cast<int64_t>(sizeof(LseState<double>));
  at::Tensor state_buf = at::empty({n_states * state_bytes}, opts.dtype(at::kByte));
  auto* state = reinterpret_cast<LseState<double>*>(state_buf.data_ptr());
  std::fill(state, state + n_states, LseState<double>{kNegInf, 0.0, -1});
  const at::ThreadLocalState tls;  // worker threads must dispatch like this one (below autograd, modes)

  const int64_t items = n_blocks * parts;
  at::parallel_for(0, items, small ? items + 1 : 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard tls_guard(tls);
    // A thread's scratch memory: one tile, the chunk's bias / scale when they need a cast, a float row and,
    // for int8, the block's quantized rows. None of it grows with V.
    at::Tensor tile = at::empty({p.rows * p.cols}, opts.dtype(s.int8 ? at::kInt : x.scalar_type()));
    at::Tensor bias_buf = at::empty({p.cols}, opts.dtype(s.int8 ? at::kFloat : x.scalar_type()));
    const bool float_tile = x.scalar_type() == at::kFloat && !s.int8;  // read in place, no float row needed
    at::Tensor row_buf = at::empty({float_tile ? 0 : p.cols}, opts.dtype(at::kFloat));
    at::Tensor scale_buf, xq, xs;
    if (s.int8) {
      scale_buf = at::empty({p.cols}, opts.dtype(at::kFloat));
      xq = at::empty({p.rows, s.D}, opts.dtype(at::kChar));
      xs = at::empty({p.rows}, opts.dtype(at::kFloat));
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / parts, part = item % parts;
      const int64_t m0 = blk * p.rows, mb = std::min(p.rows, s.M - m0);
      const int64_t k0 = part * n_chunks / parts, k1 = (part + 1) * n_chunks / parts;
      const at::Tensor xb = x.narrow(0, m0, mb);
      LseState<double>* st = state + part * s.M + m0;
      if (s.int8) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "out_proj_quantize_cpu", [&] {
          quantize_rows<scalar_t>(xb.data_ptr<scalar_t>(), xb.stride(0), mb, s.D, xq.data_ptr<int8_t>(),
                                  xs.data_ptr<float>());
        });
      }
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t v0 = k * p.cols, c = std::min(p.cols, s.V - v0);
        at::Tensor t2 = tile.narrow(0, 0, mb * c).view({mb, c});
        const at::Tensor wc = weight_chunk(weight, v0, c);
        at::Tensor bc;
        if (bias.has_value()) bc = vector_chunk(*bias, v0, c, bias_buf);
        if (s.int8) {
          // For D = 1, wc.t() is (1, c) with strides (1, 1), which torch's CPU _int_mm misreads (garbage out,
          // torch 2.13); the same data as an ordinary row-major (1, c) is read correctly.
          const at::Tensor wt = s.D == 1 ? wc.contiguous().view({1, c}) : wc.t();
          at::_int_mm_out(t2, xq.narrow(0, 0, mb), wt);
          const at::Tensor sc = vector_chunk(*weight_scale, v0, c, scale_buf);
          reduce_tile<int32_t>(t2.data_ptr<int32_t>(), mb, c, v0, xs.data_ptr<float>(), sc.data_ptr<float>(),
                               bc.defined() ? bc.data_ptr<float>() : nullptr, row_buf.data_ptr<float>(), st);
        } else {
          // Same GEMM as F.linear (addmm, rounded once to x's dtype), on a (rows, chunk) slice of its output.
          if (bc.defined())
            at::addmm_out(t2, bc, xb, wc.t());
          else
            at::mm_out(t2, xb, wc.t());
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "out_proj_reduce_cpu", [&] {
            reduce_tile<scalar_t>(t2.data_ptr<scalar_t>(), mb, c, v0, nullptr, nullptr, nullptr,
                                  row_buf.data_ptr<float>(), st);
          });
        }
      }
    }
  });

  int64_t* ids_p = ids.data_ptr<int64_t>();
  float* logp_p = logp.data_ptr<float>();
  for (int64_t r = 0; r < s.M; ++r) {
    LseState<double> acc = state[r];
    for (int64_t part = 1; part < parts; ++part) acc = lse_combine(acc, state[part * s.M + r]);
    ids_p[r] = acc.i;
    logp_p[r] = lse_logp(acc);
  }
  return {ids, logp};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) { m.impl("out_proj_argmax", &out_proj_argmax_cpu); }

}  // namespace paraformer_ext
