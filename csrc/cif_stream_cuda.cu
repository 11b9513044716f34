// Streaming CIF on CUDA (cif_stream.h). Two launches: one thread per stream counts the fires (the scalar loop
// only), the host takes N = max count (one small copy), then one block per stream re-runs the same scalar loop
// in every thread (identical decisions everywhere, so no shared state) while its threads own the channels.
// Every operation is an explicit round-to-nearest intrinsic: --use_fast_math and FMA contraction must not
// change a bit of what FunASR's float32 tensor arithmetic (and the CPU op) computes.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cif_stream.h"
#include "cuda_utils.cuh"

namespace paraformer_ext {
namespace {

// The weight of slot s of stream b (slot 0: carried, 1..len: frames, len + 1: tail).
template <typename ct>
__device__ __forceinline__ ct slot_weight(int64_t s, int64_t len, const ct* a, ct carry, ct tail) {
  return s == 0 ? carry : (s <= len ? a[s - 1] : tail);
}

template <typename ct>
__global__ void count_fires(const ct* alphas, const int64_t* lengths, const ct* carry_a, const bool* is_final,
                            int64_t B, int64_t T, ct thr, ct tail, int64_t* counts) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t len = lengths[b];
  const int64_t n_slots = 1 + len + (is_final[b] ? 1 : 0);
  ct I = ct(0);
  int64_t n = 0;
  for (int64_t s = 0; s < n_slots; ++s) {
    const ct w = slot_weight(s, len, alphas + b * T, carry_a[b], tail);
    const ct sum = add_rn(w, I);
    if (sum < thr) {
      I = sum;
    } else {
      ++n;
      I = sub_rn(sum, thr);
    }
  }
  counts[b] = n;
}

template <typename ct, typename hid_t>
__global__ void integrate(const hid_t* hidden, const ct* alphas, const int64_t* lengths, const ct* carry_a,
                          const ct* carry_h, const bool* is_final, int64_t T, int64_t D, int64_t N, ct thr, ct tail,
                          hid_t* embeds, int64_t* fire_slots, ct* out_a, ct* out_h) {
  const int64_t b = blockIdx.x;
  const int64_t len = lengths[b];
  const int64_t n_slots = 1 + len + (is_final[b] ? 1 : 0);
  const ct* a = alphas + b * T;
  const hid_t* h = hidden + b * T * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    ct I = ct(0), acc = ct(0);
    int64_t k = 0;
    for (int64_t s = 0; s < n_slots; ++s) {
      const ct w = slot_weight(s, len, a, carry_a[b], tail);
      const ct x = s == 0 ? carry_h[b * D + d] : (s <= len ? static_cast<ct>(h[(s - 1) * D + d]) : ct(0));
      const ct sum = add_rn(w, I);
      if (sum < thr) {
        I = sum;
        acc = add_rn(acc, mul_rn(w, x));
      } else {
        const ct e = add_rn(acc, mul_rn(sub_rn(thr, I), x));
        embeds[(b * N + k) * D + d] = static_cast<hid_t>(e);
        if (d == 0) fire_slots[b * N + k] = s;
        ++k;
        I = sub_rn(sum, thr);
        acc = mul_rn(I, x);
      }
    }
    out_h[b * D + d] = I > ct(0) ? div_rn(acc, I) : acc;
    if (d == 0) out_a[b] = I;
  }
  if (D == 0 && threadIdx.x == 0) {  // no channels: still the decisions and the carried weight
    ct I = ct(0);
    int64_t k = 0;
    for (int64_t s = 0; s < n_slots; ++s) {
      const ct sum = add_rn(slot_weight(s, len, a, carry_a[b], tail), I);
      if (sum < thr) {
        I = sum;
      } else {
        fire_slots[b * N + k++] = s;
        I = sub_rn(sum, thr);
      }
    }
    out_a[b] = I;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cif_stream_cuda(
    const at::Tensor& hidden_, const at::Tensor& alphas_, const at::Tensor& lengths_, const at::Tensor& carry_alpha_,
    const at::Tensor& carry_hidden_, const at::Tensor& is_final_, double threshold, double tail_threshold) {
  const CifStreamShape sh = check_cif_stream(hidden_, alphas_, lengths_, carry_alpha_, carry_hidden_, is_final_);
  const int64_t B = sh.B, T = sh.T, D = sh.D;
  const c10::cuda::CUDAGuard guard(hidden_.device());
  const at::Tensor hidden = hidden_.contiguous(), alphas = alphas_.contiguous(), lengths = lengths_.contiguous();
  const at::Tensor carry_alpha = carry_alpha_.contiguous(), carry_hidden = carry_hidden_.contiguous();
  const at::Tensor is_final = is_final_.contiguous();
  at::Tensor token_num = at::empty({B}, lengths.options());
  at::Tensor out_a = at::empty({B}, alphas.options()), out_h = at::empty({B, D}, alphas.options());
  at::Tensor embeds, fire_slots;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_stream_cuda", [&] {
    using ct = scalar_t;
    const ct thr = static_cast<ct>(threshold), tail = static_cast<ct>(tail_threshold);
    int64_t N = 0;
    if (B > 0) {
      const int threads = 128;
      count_fires<ct><<<static_cast<unsigned>((B + threads - 1) / threads), threads, 0, stream>>>(
          alphas.data_ptr<ct>(), lengths.data_ptr<int64_t>(), carry_alpha.data_ptr<ct>(), is_final.data_ptr<bool>(),
          B, T, thr, tail, token_num.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      N = token_num.max().item<int64_t>();  // the one sync: the output's size depends on the data
    }
    embeds = at::zeros({B, N, D}, hidden.options());
    fire_slots = at::full({B, N}, -1, lengths.options());
    if (B > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_stream_cuda_hidden", [&] {
        using hid_t = scalar_t;
        const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, D)));
        integrate<ct, hid_t><<<static_cast<unsigned>(B), threads, 0, stream>>>(
            hidden.data_ptr<hid_t>(), alphas.data_ptr<ct>(), lengths.data_ptr<int64_t>(), carry_alpha.data_ptr<ct>(),
            carry_hidden.data_ptr<ct>(), is_final.data_ptr<bool>(), T, D, N, thr, tail, embeds.data_ptr<hid_t>(),
            fire_slots.data_ptr<int64_t>(), out_a.data_ptr<ct>(), out_h.data_ptr<ct>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return {embeds, token_num, fire_slots, out_a, out_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CUDA, m) { m.impl("cif_stream", &cif_stream_cuda); }

}  // namespace paraformer_ext
