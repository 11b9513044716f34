// FSMN memory block on CUDA. The op is memory bound (K multiply-adds per element read), so each block
// stages a (tile_t + K - 1) x 128-channel slab of the masked input in shared memory once, and every output
// reads its K taps from there: global traffic is one read of x (plus a (K-1)/tile_t halo), one optional read
// of the residual and one write.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "fsmn.h"

namespace paraformer_ext {
namespace {

constexpr int kChannelsPerBlock = 128;
constexpr int kThreadsPerBlock = 256;
constexpr int kSmemBudget = 48 * 1024;

template <typename scalar_t, int VEC>
__global__ void fsmn_forward_tiled(Rows<scalar_t> x, const scalar_t* __restrict__ wt,
                                   const int64_t* __restrict__ lengths, Rows<scalar_t> residual,
                                   const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, int64_t T, int64_t D,
                                   int K, int left, int tile_t) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t b = blockIdx.z;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * tile_t;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + threadIdx.x * VEC;
  const int64_t len = clamp_len(lengths, b, T);
  const int rows = tile_t + K - 1;
  const int lane_off = threadIdx.x * VEC;

  for (int r = threadIdx.y; r < rows; r += blockDim.y) {
    const int64_t t = t0 - left + r;
    acc_t v[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = acc_t(0);
    if (t >= 0 && t < len && c < D) {
      scalar_t raw[VEC];
      load_vec<scalar_t, VEC>(x.row(b, t) + c, raw);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] = static_cast<acc_t>(raw[i]);
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) tile[r * kChannelsPerBlock + lane_off + i] = v[i];
  }
  __syncthreads();
  if (c >= D) return;

  for (int r = threadIdx.y; r < tile_t; r += blockDim.y) {
    const int64_t t = t0 + r;
    if (t >= T) break;
    acc_t acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = acc_t(0);
    if (t < len) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = tile[(r + left) * kChannelsPerBlock + lane_off + i];
      for (int j = 0; j < K; ++j) {
        scalar_t wraw[VEC];
        load_vec<scalar_t, VEC>(wt + static_cast<int64_t>(j) * D + c, wraw);
        const acc_t* row = tile + (r + j) * kChannelsPerBlock + lane_off;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += static_cast<acc_t>(wraw[i]) * row[i];
      }
    }
    if (residual.p != nullptr) {
      scalar_t rraw[VEC];
      load_vec<scalar_t, VEC>(residual.row(b, t) + c, rraw);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = static_cast<acc_t>(rraw[i]) + acc[i];
    }
    if (bias != nullptr) {
      scalar_t braw[VEC];
      load_vec<scalar_t, VEC>(bias + c, braw);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += static_cast<acc_t>(braw[i]);
    }
    scalar_t o[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = static_cast<scalar_t>(acc[i]);
    store_vec<scalar_t, VEC>(out + (b * T + t) * D + c, o);
  }
}

// Any K, any alignment: one thread per output element, taps read through the L1 cache.
template <typename scalar_t>
__global__ void fsmn_forward_direct(Rows<scalar_t> x, const scalar_t* __restrict__ wt,
                                    const int64_t* __restrict__ lengths, Rows<scalar_t> residual,
                                    const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, int64_t B, int64_t T,
                                    int64_t D, int K, int left) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * T * D;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = idx % D, bt = idx / D, t = bt % T, b = bt / T;
    const int64_t len = clamp_len(lengths, b, T);
    acc_t acc = acc_t(0);
    if (t < len) {
      acc = static_cast<acc_t>(x.row(b, t)[d]);
      for (int j = 0; j < K; ++j) {
        const int64_t s = t + j - left;
        if (s >= 0 && s < len) acc += static_cast<acc_t>(wt[j * D + d]) * static_cast<acc_t>(x.row(b, s)[d]);
      }
    }
    if (residual.p != nullptr) acc = static_cast<acc_t>(residual.row(b, t)[d]) + acc;
    if (bias != nullptr) acc += static_cast<acc_t>(bias[d]);
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// grad_weight[d, j] = sum_{b, t < len} g[b,t,d] * x[b, t+j-left, d] (source frame inside [0, len)).
// Block: 32 channels x 8 tap lanes over one (b, t-tile); partial sums go to gw with one atomic per (d, j).
template <typename scalar_t>
__global__ void fsmn_weight_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                        const int64_t* __restrict__ lengths, at::opmath_type<scalar_t>* __restrict__ gw,
                                        int64_t T, int64_t D, int K, int left, int tile_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.z;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * tile_t;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t len = clamp_len(lengths, b, T);
  const int64_t t_end = t0 + tile_t < len ? t0 + tile_t : len;
  for (int j = threadIdx.y; j < K; j += blockDim.y) {
    acc_t acc = acc_t(0);
    for (int64_t t = t0; t < t_end; ++t) {
      const int64_t s = t + j - left;
      if (s >= 0 && s < len)
        acc += static_cast<acc_t>(g[(b * T + t) * D + d]) * static_cast<acc_t>(x[(b * T + s) * D + d]);
    }
    if (t0 < t_end) atomicAdd(gw + d * K + j, acc);
  }
}

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  if (!t.defined()) return Rows<T>{nullptr, 0, 0};
  return Rows<T>{t.data_ptr<T>(), t.stride(0), t.stride(1)};
}

// Vector loads need every row start aligned: base pointer and both strides.
bool rows_aligned(const at::Tensor& t, int64_t vec, int64_t bytes) {
  return !t.defined() || (is_aligned(t.data_ptr(), bytes) && t.stride(0) % vec == 0 && t.stride(1) % vec == 0);
}

template <typename scalar_t, int VEC>
bool try_launch_tiled(const at::Tensor& x, const at::Tensor& wt, const int64_t* lp, const at::Tensor& residual,
                      const at::Tensor& bias, at::Tensor& out, const FsmnShape& s, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int row_bytes = kChannelsPerBlock * sizeof(acc_t);
  const int rows_max = kSmemBudget / row_bytes;
  const int lanes = kChannelsPerBlock / VEC;
  const int block_rows = kThreadsPerBlock / lanes;
  int tile_t = ((rows_max - static_cast<int>(s.K - 1)) / block_rows) * block_rows;
  if (tile_t < block_rows) return false;  // kernel too wide for the shared-memory slab
  if (s.D % VEC != 0) return false;
  const int64_t bytes = sizeof(scalar_t) * VEC;
  if (!rows_aligned(x, VEC, bytes) || !rows_aligned(residual, VEC, bytes) || !is_aligned(out.data_ptr(), bytes) ||
      !is_aligned(wt.data_ptr(), bytes) || (bias.defined() && !is_aligned(bias.data_ptr(), bytes)))
    return false;
  if (tile_t > s.T) tile_t = static_cast<int>(((s.T + block_rows - 1) / block_rows) * block_rows);
  const int64_t t_tiles = (s.T + tile_t - 1) / tile_t;
  TORCH_CHECK(t_tiles <= 65535 && s.B <= 65535, "paraformer_ext.fsmn_memory: T = ", s.T, ", B = ", s.B,
              " exceed the CUDA grid; split the batch");
  const dim3 grid((s.D + kChannelsPerBlock - 1) / kChannelsPerBlock, t_tiles, s.B);
  const dim3 block(lanes, block_rows);
  const size_t smem = static_cast<size_t>(tile_t + s.K - 1) * row_bytes;
  fsmn_forward_tiled<scalar_t, VEC><<<grid, block, smem, stream>>>(
      rows_of<scalar_t>(x), wt.data_ptr<scalar_t>(), lp, rows_of<scalar_t>(residual),
      bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), s.T, s.D, static_cast<int>(s.K),
      static_cast<int>(s.left), tile_t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

at::Tensor fsmn_memory_cuda(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& lengths,
                            int64_t left, const c10::optional<at::Tensor>& residual_in,
                            const c10::optional<at::Tensor>& bias_in) {
  const char* op = "paraformer_ext.fsmn_memory";
  const at::cuda::OptionalCUDAGuard guard(x_in.device());
  // The lengths are checked on the host (a copy of B values) as on the CPU: an out-of-range one is an error on
  // both backends. The kernels' clamp_len then never changes a value.
  const auto [s, len] = check_fsmn_forward_args(x_in, weight, lengths, left, residual_in, bias_in, op);
  const at::Tensor x = channels_contiguous(x_in);
  const at::Tensor wt = weight.t().contiguous();  // (K, D): taps are contiguous over channels
  at::Tensor residual, bias;
  if (residual_in.has_value()) residual = channels_contiguous(*residual_in);
  if (bias_in.has_value()) bias = bias_in->contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fsmn_memory_cuda", [&] {
    constexpr int VEC = 16 / sizeof(scalar_t);
    if (try_launch_tiled<scalar_t, VEC>(x, wt, lp, residual, bias, out, s, stream)) return;
    if (try_launch_tiled<scalar_t, 1>(x, wt, lp, residual, bias, out, s, stream)) return;
    const int64_t n = x.numel();
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
    fsmn_forward_direct<scalar_t><<<blocks, threads, 0, stream>>>(
        rows_of<scalar_t>(x), wt.data_ptr<scalar_t>(), lp, rows_of<scalar_t>(residual),
        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), s.B, s.T, s.D,
        static_cast<int>(s.K), static_cast<int>(s.left));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor fsmn_memory_weight_grad_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                        const c10::optional<at::Tensor>& lengths, int64_t left, int64_t kernel_size) {
  const char* op = "paraformer_ext.fsmn_memory_weight_grad";
  const at::cuda::OptionalCUDAGuard guard(x_in.device());
  const auto [s, len] = check_fsmn_weight_grad_args(grad_in, x_in, lengths, left, kernel_size, op);
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous();
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gw = at::zeros({s.D, s.K}, x.options().dtype(acc_dtype));
  if (x.numel() == 0) return gw.to(x.scalar_type());
  const int tile_t = 64;
  const int64_t t_tiles = (s.T + tile_t - 1) / tile_t;
  TORCH_CHECK(t_tiles <= 65535 && s.B <= 65535, op, ": T = ", s.T, ", B = ", s.B, " exceed the CUDA grid");
  const dim3 block(32, 8);
  const dim3 grid((s.D + 31) / 32, t_tiles, s.B);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fsmn_memory_weight_grad_cuda", [&] {
    fsmn_weight_grad_kernel<scalar_t><<<grid, block, 0, stream>>>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), len.defined() ? len.data_ptr<int64_t>() : nullptr,
        gw.data_ptr<at::opmath_type<scalar_t>>(), s.T, s.D, static_cast<int>(s.K), static_cast<int>(s.left), tile_t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gw.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) {
  m.impl("fsmn_memory", &fsmn_memory_cuda);
  m.impl("fsmn_memory_weight_grad", &fsmn_memory_weight_grad_cuda);
}

}  // namespace paraformer_ext
