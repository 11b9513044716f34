// CIF on CUDA, in two phases (semantics and the exact fast path: cif.h).
//
// Phase 1, the scan: one block per utterance reads its alphas (tiny) and writes the fires vector, the fire
// frames and each fire's (cur, rem) weights in float64. For float32 alphas and threshold 1 (FunASR's case) it
// runs as a parallel block scan in 64-bit fixed point, bit-identical to the float64 loop; other inputs run
// the float64 loop itself on one thread (alphas staged in shared memory).
//
// Phase 2, the embeddings: one warp per output row (utterance b, token k) sums the token's contiguous frame
// range [f_{k-1}, f_k] with 16-byte loads, in the same order as the CPU. Every hidden frame is read once
// (the boundary frame of two tokens twice, from L2). Rows past an utterance's token count are zero-filled
// by the same kernel, so no memset pass.
//
// The output's row count N is data dependent. Rather than stall the GPU between the phases while the host
// learns N, the output is allocated with capacity max(T+1, min_tokens) rows, phase 2 reads N from device
// memory and writes the compact (B, N, D) layout, and the host waits only for phase 1's 8-byte summary
// (copied before phase 2 in stream order) while phase 2 runs, then shrinks the tensors' sizes with resize_.
// The returned tensors are contiguous; their storage keeps the capacity (at most the size of hidden plus
// B rows). Outputs whose capacity would exceed 1 GiB wait for N first and are allocated exactly.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "cif.h"
#include "cuda_utils.cuh"

namespace paraformer_ext {
namespace {

using cif::ScanRow;

constexpr int kScanThreads = 256;
constexpr int kScanWarps = kScanThreads / 32;
constexpr int kScanItems = 8;                          // consecutive frames per thread in the parallel scan
constexpr int kScanChunk = kScanThreads * kScanItems;  // frames per block iteration
constexpr int kSeqChunk = 2048;                        // alphas staged per step of the sequential loop
constexpr int kRowThreads = 256;                       // phase 2 / backward: 8 warps, one row each
constexpr int kBatch = 8;                              // phase 2: frames loaded together per token

// Exclusive block-wide scan of v (256 threads). `total` receives the block's sum. All threads must call it.
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T& total, T* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T x = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  T before = T(0), tot = T(0);
#pragma unroll
  for (int j = 0; j < kScanWarps; ++j) {
    const T s = warp_sums[j];
    if (j < warp) before += s;
    tot += s;
  }
  __syncthreads();  // warp_sums is reused by the next call
  total = tot;
  return before + x - v;
}

template <typename alpha_t>
__global__ void __launch_bounds__(kScanThreads)
    cif_scan_kernel(const alpha_t* __restrict__ alphas, const int64_t* __restrict__ lengths, int64_t T, int64_t Tf,
                    bool has_tail, double threshold, double tail, alpha_t* __restrict__ fires,
                    int64_t* __restrict__ token_num, int64_t* __restrict__ fire_frame, double* __restrict__ cur,
                    double* __restrict__ rem, int32_t* __restrict__ frame_info, int* __restrict__ aux) {
  __shared__ double s_alpha[kSeqChunk];
  __shared__ unsigned long long s_wq[kScanWarps];
  __shared__ int s_wc[kScanWarps];
  __shared__ unsigned long long s_base;
  __shared__ long long s_count;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  int64_t len = T;
  bool bad_len = false;
  if (lengths != nullptr) {
    len = lengths[b];
    if (len < 0 || len > T) {
      bad_len = true;
      len = len < 0 ? 0 : T;
    }
  }
  const alpha_t* a = alphas + b * T;
  const int64_t o = b * Tf;
  const ScanRow<alpha_t> r{fires + o, fire_frame + o, cur + o, rem + o, frame_info ? frame_info + o : nullptr};

  bool ok = true, fixed_ok = threshold == 1.0;
  for (int64_t t = tid; t < len; t += kScanThreads) {
    const double x = static_cast<double>(a[t]);
    ok = ok && cif::alpha_ok(x);
    uint64_t A;
    fixed_ok = fixed_ok && cif::to_fixed(x, A);
  }
  const bool bad_alpha = __syncthreads_or(!ok);
  const bool fast = __syncthreads_and(fixed_ok);
  if (bad_alpha) len = 0;  // the host raises; scan nothing so that phase 2 reads nothing

  double I = 0.0;
  int64_t count = 0;
  if (fast) {
    if (tid == 0) {
      s_base = 0;
      s_count = 0;
    }
    __syncthreads();
    for (int64_t c0 = 0; c0 < len; c0 += kScanChunk) {
      const int64_t t0 = c0 + static_cast<int64_t>(tid) * kScanItems;
      uint64_t A[kScanItems];
      unsigned long long sum = 0;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        A[i] = 0;
        if (t0 + i < len) cif::to_fixed(static_cast<double>(a[t0 + i]), A[i]);
        sum += A[i];
      }
      unsigned long long chunk_sum;
      const unsigned long long q0 = s_base + block_exclusive_scan<unsigned long long>(sum, chunk_sum, s_wq);
      int n_fire = 0;
      uint64_t q = q0;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        n_fire += ((q & cif::kFracMask) + A[i] >= cif::kOne) ? 1 : 0;
        q += A[i];
      }
      int chunk_fires;
      int64_t k = s_count + block_exclusive_scan<int>(n_fire, chunk_fires, s_wc);
      q = q0;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        if (t0 + i < len) cif::fixed_step(A[i], t0 + i, q, k, r);
      }
      __syncthreads();  // everyone has read s_base / s_count
      if (tid == 0) {
        s_base += chunk_sum;
        s_count += chunk_fires;
      }
      __syncthreads();
    }
    I = static_cast<double>(s_base & cif::kFracMask) * cif::kFixUnit;
    count = s_count;
  } else {
    for (int64_t c0 = 0; c0 < len; c0 += kSeqChunk) {
      const int n = static_cast<int>(len - c0 < kSeqChunk ? len - c0 : kSeqChunk);
      for (int i = tid; i < n; i += kScanThreads) s_alpha[i] = static_cast<double>(a[c0 + i]);
      __syncthreads();
      if (tid == 0) {
        for (int i = 0; i < n; ++i) cif::loop_step(s_alpha[i], c0 + i, threshold, I, count, r);
      }
      __syncthreads();
    }
  }

  int64_t scanned = len;
  if (has_tail) {
    if (tid == 0) cif::loop_step(tail, len, threshold, I, count, r);
    scanned += 1;
  }
  for (int64_t t = scanned + tid; t < Tf; t += kScanThreads) {
    r.fires[t] = alpha_t(0);
    if (r.frame_info) r.frame_info[t] = -1;
  }
  if (tid == 0) {
    token_num[b] = count;
    atomicMax(aux, static_cast<int>(count));
    const int flags = (bad_alpha ? cif::kBadAlpha : 0) | (bad_len ? cif::kBadLength : 0);
    if (flags) atomicOr(aux + 1, flags);
  }
}

// acc[i] += w * x[i] for one frame's VEC channels.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void axpy_vec(acc_t (&acc)[VEC], acc_t w, const scalar_t* p) {
  scalar_t x[VEC];
  load_vec<scalar_t, VEC>(p, x);
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] += w * static_cast<acc_t>(x[i]);
}

template <typename scalar_t, typename alpha_t, int VEC>
__global__ void __launch_bounds__(kRowThreads)
    cif_embed_kernel(const scalar_t* __restrict__ hidden, const alpha_t* __restrict__ alphas,
                     const int64_t* __restrict__ lengths, int64_t B, int64_t T, int64_t D, int64_t Tf,
                     const int64_t* __restrict__ token_num, const int64_t* __restrict__ fire_frame,
                     const double* __restrict__ cur, const double* __restrict__ rem, const int* __restrict__ aux,
                     int64_t min_tokens, scalar_t* __restrict__ out, int64_t* __restrict__ fire_frames_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = static_cast<int64_t>(aux[0]) > min_tokens ? static_cast<int64_t>(aux[0]) : min_tokens;
  constexpr int kWarps = kRowThreads / 32;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t groups = (N + kWarps - 1) / kWarps;
  const int64_t work = B * groups;
  for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
    const int64_t b = w / groups;
    const int64_t k = (w % groups) * kWarps + warp;
    if (k >= N) continue;
    scalar_t* row = out + (b * N + k) * D;
    const int64_t cnt = token_num[b];
    if (k >= cnt) {
      scalar_t z[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) z[i] = scalar_t(0);
      for (int64_t c = static_cast<int64_t>(lane) * VEC; c < D; c += 32 * VEC) store_vec<scalar_t, VEC>(row + c, z);
      if (lane == 0) fire_frames_out[b * N + k] = -1;
      continue;
    }
    const int64_t o = b * Tf;
    const int64_t f = fire_frame[o + k];
    if (lane == 0) fire_frames_out[b * N + k] = f;
    const int64_t len = clamp_len(lengths, b, T);
    const acc_t w_end = static_cast<acc_t>(cur[o + k]);
    int64_t p = -1;
    acc_t w_start = acc_t(0);
    if (k > 0) {
      p = fire_frame[o + k - 1];
      w_start = static_cast<acc_t>(rem[o + k - 1]);
    }
    // Frames [first, last] with hidden content, summed in ascending order (the CPU's order): the previous
    // fire frame with weight rem, interior frames with their alpha, the fire frame with weight cur (absent
    // when the token fired on the tail slot, whose hidden frame is zero).
    const int64_t first = p >= 0 ? p : 0;
    const int64_t last = (f < len ? f : len - 1);
    const scalar_t* hb = hidden + b * T * D;
    const alpha_t* ab = alphas + b * T;
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < D; c += 32 * VEC) {
      acc_t acc[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = acc_t(0);
      // kBatch predicated loads are issued before any of them is used: a token's frames are in flight
      // together (tokens span ~3-5 frames), which is what keeps HBM busy.
      for (int64_t t0 = first; t0 <= last; t0 += kBatch) {
        scalar_t x[kBatch][VEC];
        acc_t wt[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          const int64_t t = t0 + j;
          wt[j] = acc_t(0);
          if (t <= last) {
            load_vec<scalar_t, VEC>(hb + t * D + c, x[j]);
            wt[j] = t == p ? w_start : (t == f ? w_end : static_cast<acc_t>(ab[t]));
          }
        }
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          if (t0 + j <= last) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[i] += wt[j] * static_cast<acc_t>(x[j][i]);
          }
        }
      }
      scalar_t res[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) res[i] = static_cast<scalar_t>(acc[i]);
      store_vec<scalar_t, VEC>(row + c, res);
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Backward, per frame row (warp per row): grad_hidden and the per-frame scalars of the alpha gradient
// (derivation: cif_cpu.cpp and paraformer_ext/ops/cif.py).
template <typename scalar_t, typename alpha_t, int VEC>
__global__ void __launch_bounds__(kRowThreads)
    cif_backward_frames_kernel(const scalar_t* __restrict__ G, const double* __restrict__ gF,
                               const scalar_t* __restrict__ hidden, const alpha_t* __restrict__ alphas,
                               const int64_t* __restrict__ lengths, int64_t B, int64_t T, int64_t D, int64_t Tf,
                               int64_t N, bool has_tail, const int64_t* __restrict__ token_num,
                               const double* __restrict__ cur, const double* __restrict__ rem,
                               const int32_t* __restrict__ frame_info, scalar_t* __restrict__ grad_h,
                               double* __restrict__ local, double* __restrict__ sarr) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWarps = kRowThreads / 32;
  const int lane = threadIdx.x & 31;
  const int64_t rows = B * Tf;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t b = row / Tf, t = row % Tf;
    const int64_t len = clamp_len(lengths, b, T);
    const int64_t scanned = len + (has_tail ? 1 : 0);
    const double gft = (gF != nullptr && t < scanned) ? gF[row] : 0.0;
    scalar_t* ghr = grad_h + (b * T + (t < T ? t : 0)) * D;
    if (t >= len) {
      if (t < T) {
        scalar_t z[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) z[i] = scalar_t(0);
        for (int64_t c = static_cast<int64_t>(lane) * VEC; c < D; c += 32 * VEC) store_vec<scalar_t, VEC>(ghr + c, z);
      }
      if (lane == 0) {
        local[row] = 0.0;
        sarr[row] = gft;
      }
      continue;
    }
    const int32_t fi = frame_info[row];
    const int64_t k = fi >> 1;
    const bool fire = fi & 1;
    const int64_t cnt = token_num[b] < N ? token_num[b] : N;
    const int64_t o = b * Tf;
    const scalar_t* g1 = nullptr;
    const scalar_t* g2 = nullptr;
    acc_t w1 = acc_t(0), w2 = acc_t(0);
    if (fi >= 0 && k < cnt) {  // fi < 0 only if the scan rejected this utterance (the forward raised)
      g1 = G + (b * N + k) * D;
      w1 = fire ? static_cast<acc_t>(cur[o + k]) : static_cast<acc_t>(alphas[b * T + t]);
      if (fire && k + 1 < cnt) {
        g2 = G + (b * N + k + 1) * D;
        w2 = static_cast<acc_t>(rem[o + k]);
      }
    }
    const scalar_t* hr = hidden + (b * T + t) * D;
    acc_t d1 = acc_t(0), d2 = acc_t(0);
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < D; c += 32 * VEC) {
      scalar_t hv[VEC], a1[VEC], a2[VEC], res[VEC];
      load_vec<scalar_t, VEC>(hr + c, hv);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a1[i] = a2[i] = scalar_t(0);
      if (g1) load_vec<scalar_t, VEC>(g1 + c, a1);
      if (g2) load_vec<scalar_t, VEC>(g2 + c, a2);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t x = static_cast<acc_t>(hv[i]), y1 = static_cast<acc_t>(a1[i]), y2 = static_cast<acc_t>(a2[i]);
        res[i] = static_cast<scalar_t>(w1 * y1 + w2 * y2);
        d1 += y1 * x;
        d2 += y2 * x;
      }
      store_vec<scalar_t, VEC>(ghr + c, res);
    }
    d1 = warp_sum(d1);
    d2 = warp_sum(d2);
    if (lane == 0) {
      local[row] = static_cast<double>(d1);
      sarr[row] = gft + (fire ? static_cast<double>(d2) - static_cast<double>(d1) : 0.0);
    }
  }
}

// grad_alpha[u] = local[u] + sum_{u <= t < scanned} sarr[t]: a suffix sum per utterance (block per utterance;
// thread j owns segment kScanThreads-1-j so that an exclusive scan in thread order sums the later segments).
template <typename alpha_t>
__global__ void __launch_bounds__(kScanThreads)
    cif_backward_alpha_kernel(const double* __restrict__ local, const double* __restrict__ sarr,
                              const int64_t* __restrict__ lengths, int64_t T, int64_t Tf, bool has_tail,
                              alpha_t* __restrict__ grad_a) {
  __shared__ double s_w[kScanWarps];
  const int64_t b = blockIdx.x;
  const int64_t len = clamp_len(lengths, b, T);
  const int64_t scanned = len + (has_tail ? 1 : 0);
  const int64_t seg = (scanned + kScanThreads - 1) / kScanThreads;
  const int64_t sidx = kScanThreads - 1 - threadIdx.x;
  const int64_t lo = sidx * seg < scanned ? sidx * seg : scanned;
  const int64_t hi = lo + seg < scanned ? lo + seg : scanned;
  const double* s = sarr + b * Tf;
  double mine = 0.0;
  for (int64_t t = lo; t < hi; ++t) mine += s[t];
  double total;
  double run = block_exclusive_scan<double>(mine, total, s_w);
  for (int64_t t = hi - 1; t >= lo; --t) {
    run += s[t];
    if (t < len) grad_a[b * T + t] = static_cast<alpha_t>(local[b * Tf + t] + run);
  }
  for (int64_t t = len + threadIdx.x; t < T; t += kScanThreads) grad_a[b * T + t] = alpha_t(0);
}

// An event that is waited for (if recorded) and destroyed when it goes out of scope, so that an early exit
// never frees buffers a pending copy still uses.
struct EventGuard {
  cudaEvent_t event = nullptr;
  bool recorded = false;
  EventGuard() { C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  EventGuard(const EventGuard&) = delete;
  EventGuard& operator=(const EventGuard&) = delete;
  void record(cudaStream_t stream) {
    C10_CUDA_CHECK(cudaEventRecord(event, stream));
    recorded = true;
  }
  void wait() {
    if (recorded) C10_CUDA_CHECK(cudaEventSynchronize(event));
    recorded = false;
  }
  ~EventGuard() {
    if (recorded) cudaEventSynchronize(event);
    cudaEventDestroy(event);
  }
};

// The scan's outputs. fire_frame / cur / rem / aux live in one workspace allocation (fewer host calls per op).
struct DeviceScan {
  at::Tensor fires, token_num, frame_info, workspace;
  int64_t* fire_frame = nullptr;  // (B, Tf)
  double* cur = nullptr;          // (B, Tf)
  double* rem = nullptr;          // (B, Tf)
  int* aux = nullptr;             // [max token count, error bits]
};

DeviceScan launch_scan(const at::Tensor& alphas, const at::Tensor& len, const CifShape& s, double threshold,
                       double tail, bool with_frame_info, cudaStream_t stream) {
  static_assert(sizeof(int64_t) == sizeof(double) && 2 * sizeof(int) == sizeof(double), "workspace layout");
  DeviceScan d;
  const auto opts = alphas.options();
  d.fires = at::empty({s.B, s.Tf}, opts);
  d.token_num = at::empty({s.B}, opts.dtype(at::kLong));
  if (with_frame_info) d.frame_info = at::empty({s.B, s.Tf}, opts.dtype(at::kInt));
  const int64_t n = s.B * s.Tf;
  d.workspace = at::empty({3 * n + 1}, opts.dtype(at::kDouble));
  double* ws = d.workspace.data_ptr<double>();
  d.fire_frame = reinterpret_cast<int64_t*>(ws);
  d.cur = ws + n;
  d.rem = ws + 2 * n;
  d.aux = reinterpret_cast<int*>(ws + 3 * n);
  C10_CUDA_CHECK(cudaMemsetAsync(d.aux, 0, 2 * sizeof(int), stream));
  if (s.B == 0) return d;
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_scan_cuda", [&] {
    cif_scan_kernel<scalar_t><<<static_cast<unsigned>(s.B), kScanThreads, 0, stream>>>(
        alphas.data_ptr<scalar_t>(), len.defined() ? len.data_ptr<int64_t>() : nullptr, s.T, s.Tf, s.has_tail,
        threshold, tail, d.fires.data_ptr<scalar_t>(), d.token_num.data_ptr<int64_t>(), d.fire_frame, d.cur, d.rem,
        with_frame_info ? d.frame_info.data_ptr<int32_t>() : nullptr, d.aux);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return d;
}

// Grid for a warp-per-row kernel: enough blocks to fill every SM at the kernel's occupancy, looping over
// rows. The occupancy query is cached per (kernel, device): it is host time on every call otherwise.
template <typename Kernel>
int64_t row_grid(Kernel kernel, int64_t rows) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int64_t> resident_blocks;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int64_t resident = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
    auto it = resident_blocks.find(key);
    if (it == resident_blocks.end()) {
      int sm_count = 0, per_sm = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads, 0));
      it = resident_blocks.emplace(key, static_cast<int64_t>(std::max(sm_count, 1)) * std::max(per_sm, 1)).first;
    }
    resident = it->second;
  }
  const int64_t warps = kRowThreads / 32;
  return std::max<int64_t>(1, std::min<int64_t>((rows + warps - 1) / warps, resident));
}

void check_common(const at::Tensor& hidden, const c10::optional<at::Tensor>& lengths, const CifShape& s,
                  const char* op) {
  TORCH_CHECK(hidden.is_cuda(), op, ": expected CUDA tensors");
  TORCH_CHECK(s.B <= 2147483647LL, op, ": batch of ", s.B, " exceeds the CUDA grid; split it");
  if (lengths.has_value()) check_same_device(*lengths, hidden, op, "lengths", "hidden");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cif_cuda(const at::Tensor& hidden_in,
                                                                    const at::Tensor& alphas_in,
                                                                    const c10::optional<at::Tensor>& lengths,
                                                                    double threshold, double tail_threshold,
                                                                    int64_t min_tokens) {
  const char* op = "paraformer_ext.cif";
  const CifShape s = check_cif_args(hidden_in, alphas_in, threshold, tail_threshold, op);
  TORCH_CHECK(min_tokens >= 0, op, ": min_tokens must be >= 0, got ", min_tokens);
  check_common(hidden_in, lengths, s, op);
  const at::cuda::OptionalCUDAGuard guard(hidden_in.device());
  // lengths are validated by the scan (error bits come back with the row count): no extra sync.
  const at::Tensor len = checked_lengths(lengths, hidden_in, s.B, op);
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor alphas = alphas_in.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  DeviceScan sc = launch_scan(alphas, len, s, threshold, tail_threshold, false, stream);
  // The 8-byte summary (max token count, error bits) goes to the host on a side stream, so that phase 2,
  // queued right behind the scan, does not wait for the copy.
  at::Tensor aux_host = at::empty({2}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, hidden.device().index());
  EventGuard scan_done, summary_ready;
  scan_done.record(stream);
  C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), scan_done.event, 0));
  C10_CUDA_CHECK(cudaMemcpyAsync(aux_host.data_ptr<int>(), sc.aux, 2 * sizeof(int),
                                 cudaMemcpyDeviceToHost, side.stream()));
  summary_ready.record(side.stream());
  // The host needs N; phase 2 does not wait for it (see the top of this file). Very large outputs are the
  // exception: their capacity would cost too much memory, so those wait for the summary and allocate exactly.
  const int64_t cap_rows = std::max<int64_t>(s.Tf, min_tokens);
  const bool speculative = s.B * cap_rows * s.D * static_cast<int64_t>(hidden.element_size()) <= (int64_t(1) << 30);
  const int* ah = aux_host.data_ptr<int>();
  auto wait_summary = [&] {
    summary_ready.wait();
    check_cif_errors(ah[1], op);
  };
  if (!speculative) wait_summary();

  const int64_t cap = speculative ? cap_rows : std::max<int64_t>(ah[0], min_tokens);
  at::Tensor embeds = at::empty({s.B, cap, s.D}, hidden.options());
  at::Tensor fire_frames = at::empty({s.B, cap}, hidden.options().dtype(at::kLong));
  if (s.B > 0 && cap > 0) {
    const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_embed_cuda", [&] {
      using hid_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_embed_cuda_alpha", [&] {
        using alpha_t = scalar_t;
        constexpr int VEC = 16 / sizeof(hid_t);
        const bool vec_ok = s.D % VEC == 0 && is_aligned(hidden.data_ptr(), 16) && is_aligned(embeds.data_ptr(), 16);
        auto launch = [&](auto kernel) {
          const int64_t grid = row_grid(kernel, s.B * cap);
          kernel<<<static_cast<unsigned>(grid), kRowThreads, 0, stream>>>(
              hidden.data_ptr<hid_t>(), alphas.data_ptr<alpha_t>(), lp, s.B, s.T, s.D, s.Tf,
              sc.token_num.data_ptr<int64_t>(), sc.fire_frame, sc.cur, sc.rem, sc.aux, min_tokens,
              embeds.data_ptr<hid_t>(),
              fire_frames.data_ptr<int64_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (vec_ok)
          launch(cif_embed_kernel<hid_t, alpha_t, VEC>);
        else
          launch(cif_embed_kernel<hid_t, alpha_t, 1>);
      });
    });
  }
  if (speculative) wait_summary();
  const int64_t N = std::max<int64_t>(ah[0], min_tokens);
  embeds.resize_({s.B, N, s.D});
  fire_frames.resize_({s.B, N});
  return {embeds, sc.token_num, sc.fires, fire_frames};
}

std::tuple<at::Tensor, at::Tensor> cif_backward_cuda(const at::Tensor& grad_in,
                                                     const c10::optional<at::Tensor>& grad_fires_in,
                                                     const at::Tensor& hidden_in, const at::Tensor& alphas_in,
                                                     const c10::optional<at::Tensor>& lengths, double threshold,
                                                     double tail_threshold) {
  const char* op = "paraformer_ext.cif_backward";
  const CifShape s = check_cif_args(hidden_in, alphas_in, threshold, tail_threshold, op);
  check_common(hidden_in, lengths, s, op);
  const at::Tensor gF = check_cif_backward_grads(grad_in, grad_fires_in, hidden_in, s, op);
  const at::cuda::OptionalCUDAGuard guard(hidden_in.device());
  const at::Tensor len = checked_lengths(lengths, hidden_in, s.B, op);
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor alphas = alphas_in.contiguous();
  const at::Tensor G = grad_in.contiguous();
  const int64_t N = G.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // The forward validated these inputs; the backward trusts its scan (rows past N are treated as absent).
  DeviceScan sc = launch_scan(alphas, len, s, threshold, tail_threshold, true, stream);

  at::Tensor grad_h = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  at::Tensor grad_a = at::empty({s.B, s.T}, alphas.options());
  if (s.B == 0) return {grad_h, grad_a};
  at::Tensor local = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kDouble));
  at::Tensor sarr = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kDouble));
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_backward_cuda", [&] {
    using hid_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_backward_cuda_alpha", [&] {
      using alpha_t = scalar_t;
      if (s.Tf > 0) {
        constexpr int VEC = 16 / sizeof(hid_t);
        const bool vec_ok = s.D % VEC == 0 && is_aligned(hidden.data_ptr(), 16) && is_aligned(G.data_ptr(), 16) &&
                            is_aligned(grad_h.data_ptr(), 16);
        auto launch = [&](auto kernel) {
          const int64_t grid = row_grid(kernel, s.B * s.Tf);
          kernel<<<static_cast<unsigned>(grid), kRowThreads, 0, stream>>>(
              G.data_ptr<hid_t>(), gF.defined() ? gF.data_ptr<double>() : nullptr, hidden.data_ptr<hid_t>(),
              alphas.data_ptr<alpha_t>(), lp, s.B, s.T, s.D, s.Tf, N, s.has_tail, sc.token_num.data_ptr<int64_t>(),
              sc.cur, sc.rem, sc.frame_info.data_ptr<int32_t>(),
              grad_h.data_ptr<hid_t>(), local.data_ptr<double>(), sarr.data_ptr<double>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (vec_ok)
          launch(cif_backward_frames_kernel<hid_t, alpha_t, VEC>);
        else
          launch(cif_backward_frames_kernel<hid_t, alpha_t, 1>);
      }
      cif_backward_alpha_kernel<alpha_t><<<static_cast<unsigned>(s.B), kScanThreads, 0, stream>>>(
          local.data_ptr<double>(), sarr.data_ptr<double>(), lp, s.T, s.Tf, s.has_tail, grad_a.data_ptr<alpha_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_h, grad_a};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) {
  m.impl("cif", &cif_cuda);
  m.impl("cif_backward", &cif_backward_cuda);
}

}  // namespace paraformer_ext
