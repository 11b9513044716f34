// CIF on the CPU. The scan (fire decisions, float64) runs per utterance in parallel over the batch; the
// embedding pass is parallel over (utterance, token) and reads each token's contiguous frame range once,
// accumulating over channels in float (double for float64 hidden) in a fixed order, so a token's embedding
// depends only on its own frames: batched == single, bit for bit.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cif.h"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

namespace paraformer_ext {
namespace {

using cif::ScanRow;

// Scans one utterance: valid frames t < len, then the tail slot at index len. Returns the input error bits.
template <typename alpha_t>
int scan_row(const alpha_t* a, int64_t len, const CifShape& s, double threshold, double tail,
             const ScanRow<alpha_t>& r, int64_t& count) {
  int flags = 0;
  bool fast = threshold == 1.0;
  for (int64_t t = 0; t < len; ++t) {
    const double x = static_cast<double>(a[t]);
    if (!cif::alpha_ok(x)) flags |= cif::kBadAlpha;
    uint64_t A;
    if (fast && !cif::to_fixed(x, A)) fast = false;
  }
  count = 0;
  if (flags) return flags;
  double I = 0.0;
  if (fast) {
    // Same bits as the float64 loop (cif.h); kept on the CPU so that the CPU tests exercise the exact
    // fixed-point arithmetic the CUDA scan uses.
    uint64_t q = 0;
    for (int64_t t = 0; t < len; ++t) {
      uint64_t A = 0;
      cif::to_fixed(static_cast<double>(a[t]), A);
      cif::fixed_step(A, t, q, count, r);
    }
    I = static_cast<double>(q & cif::kFracMask) * cif::kFixUnit;
  } else {
    for (int64_t t = 0; t < len; ++t) cif::loop_step(static_cast<double>(a[t]), t, threshold, I, count, r);
  }
  int64_t scanned = len;
  if (s.has_tail) {
    cif::loop_step(tail, len, threshold, I, count, r);
    scanned += 1;
  }
  for (int64_t t = scanned; t < s.Tf; ++t) {
    r.fires[t] = alpha_t(0);
    if (r.frame_info) r.frame_info[t] = -1;
  }
  return flags;
}

struct ScanResult {
  at::Tensor fires, token_num, fire_frame, cur, rem, frame_info;
};

ScanResult scan_all(const at::Tensor& alphas, const int64_t* lp, const CifShape& s, double threshold, double tail,
                    bool with_frame_info, const char* op) {
  ScanResult res;
  const auto dopt = alphas.options().dtype(at::kDouble);
  res.fires = at::empty({s.B, s.Tf}, alphas.options());
  res.token_num = at::empty({s.B}, alphas.options().dtype(at::kLong));
  res.fire_frame = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kLong));
  res.cur = at::empty({s.B, s.Tf}, dopt);
  res.rem = at::empty({s.B, s.Tf}, dopt);
  if (with_frame_info) res.frame_info = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kInt));
  std::vector<int> flags(static_cast<size_t>(s.B), 0);
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_scan_cpu", [&] {
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    scalar_t* fires = res.fires.data_ptr<scalar_t>();
    int64_t* cnt = res.token_num.data_ptr<int64_t>();
    int64_t* ff = res.fire_frame.data_ptr<int64_t>();
    double* cur = res.cur.data_ptr<double>();
    double* rem = res.rem.data_ptr<double>();
    int32_t* info = with_frame_info ? res.frame_info.data_ptr<int32_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, s.T));
    at::parallel_for(0, s.B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t o = b * s.Tf;
        const ScanRow<scalar_t> r{fires + o, ff + o, cur + o, rem + o, info ? info + o : nullptr};
        const int64_t len = lp ? lp[b] : s.T;
        flags[b] = scan_row<scalar_t>(a + b * s.T, len, s, threshold, tail, r, cnt[b]);
      }
    });
  });
  int all = 0;
  for (int f : flags) all |= f;
  check_cif_errors(all, op);
  return res;
}

// float16 / bfloat16 rows -> float, vectorised (c10's scalar conversions are a loop of bit manipulations).
inline void widen(const c10::Half* x, float* out, int64_t D) {
  int64_t d = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; d + 8 <= D; d += 8)
    _mm256_storeu_ps(out + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + d))));
#endif
  for (; d < D; ++d) out[d] = static_cast<float>(x[d]);
}

inline void widen(const c10::BFloat16* x, float* out, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    const uint32_t u = static_cast<uint32_t>(x[d].x) << 16;  // bfloat16 is the top half of a float32
    float f;
    std::memcpy(&f, &u, sizeof(f));
    out[d] = f;
  }
}

// acc += w * x over one frame's D channels; buf is D floats of scratch for the 16-bit types.
template <typename acc_t, typename scalar_t>
inline void axpy(acc_t* acc, acc_t w, const scalar_t* x, int64_t D, acc_t* buf) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    for (int64_t d = 0; d < D; ++d) acc[d] += w * x[d];
  } else {
    widen(x, buf, D);
    for (int64_t d = 0; d < D; ++d) acc[d] += w * buf[d];
  }
}

// Token k of one utterance: rem_{k-1} h[f_{k-1}] + sum_{f_{k-1} < t < f_k} a_t h[t] + cur_k h[f_k], in this order.
// Frames at or past len (the tail slot) carry a zero hidden frame and are skipped.
template <typename scalar_t, typename alpha_t, typename acc_t>
void token_embedding(const scalar_t* h, const alpha_t* a, int64_t len, int64_t D, int64_t k, const int64_t* ff,
                     const double* cur, const double* rem, acc_t* acc, acc_t* buf) {
  std::fill(acc, acc + D, acc_t(0));
  int64_t start = 0;
  if (k > 0) {
    const int64_t p = ff[k - 1];
    if (p < len) axpy(acc, static_cast<acc_t>(rem[k - 1]), h + p * D, D, buf);
    start = p + 1;
  }
  const int64_t f = ff[k];
  for (int64_t t = start; t < f; ++t) axpy(acc, static_cast<acc_t>(a[t]), h + t * D, D, buf);
  if (f < len) axpy(acc, static_cast<acc_t>(cur[k]), h + f * D, D, buf);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cif_cpu(const at::Tensor& hidden_in,
                                                                   const at::Tensor& alphas_in,
                                                                   const c10::optional<at::Tensor>& lengths,
                                                                   double threshold, double tail_threshold,
                                                                   int64_t min_tokens) {
  const char* op = "paraformer_ext.cif";
  const CifShape s = check_cif_args(hidden_in, alphas_in, threshold, tail_threshold, op);
  TORCH_CHECK(min_tokens >= 0, op, ": min_tokens must be >= 0, got ", min_tokens);
  if (lengths.has_value()) check_same_device(*lengths, hidden_in, op, "lengths", "hidden");
  const at::Tensor len = checked_lengths(lengths, hidden_in, s.B, op);
  check_lengths_range(len, s.T, op);
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor alphas = alphas_in.contiguous();
  ScanResult sc = scan_all(alphas, lp, s, threshold, tail_threshold, false, op);

  const int64_t* cnt = sc.token_num.data_ptr<int64_t>();
  int64_t N = min_tokens;
  for (int64_t b = 0; b < s.B; ++b) N = std::max(N, cnt[b]);
  at::Tensor embeds = at::empty({s.B, N, s.D}, hidden.options());
  at::Tensor fire_frames = at::empty({s.B, N}, hidden.options().dtype(at::kLong));
  if (s.B * N == 0) return {embeds, sc.token_num, sc.fires, fire_frames};

  const int64_t* ff = sc.fire_frame.data_ptr<int64_t>();
  const double* cur = sc.cur.data_ptr<double>();
  const double* rem = sc.rem.data_ptr<double>();
  int64_t* ff_out = fire_frames.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_cpu", [&] {
    using hid_t = scalar_t;
    using acc_t = at::opmath_type<hid_t>;
    AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_cpu_alpha", [&] {
      using alpha_t = scalar_t;
      const hid_t* h = hidden.data_ptr<hid_t>();
      const alpha_t* a = alphas.data_ptr<alpha_t>();
      hid_t* out = embeds.data_ptr<hid_t>();
      // About 64k multiply-adds per task (frames per token ~ Tf / N): small batches stay on one thread.
      const int64_t frames_per_token = std::max<int64_t>(1, s.Tf / std::max<int64_t>(1, N));
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, s.D * frames_per_token));
      at::parallel_for(0, s.B * N, grain, [&](int64_t begin, int64_t end) {
        const size_t extra = std::is_same_v<acc_t, hid_t> ? 0 : static_cast<size_t>(s.D);
        std::vector<acc_t> scratch(2 * extra);  // accumulator row + widened frame, 16-bit types only
        for (int64_t w = begin; w < end; ++w) {
          const int64_t b = w / N, k = w % N;
          hid_t* row = out + w * s.D;
          if (k >= cnt[b]) {
            std::fill(row, row + s.D, hid_t(0));
            ff_out[w] = -1;
            continue;
          }
          const int64_t o = b * s.Tf;
          ff_out[w] = ff[o + k];
          const int64_t l = lp ? lp[b] : s.T;
          if constexpr (std::is_same_v<acc_t, hid_t>) {  // accumulate in the output row itself
            token_embedding<hid_t, alpha_t, acc_t>(h + b * s.T * s.D, a + b * s.T, l, s.D, k, ff + o, cur + o,
                                                   rem + o, reinterpret_cast<acc_t*>(row), nullptr);
          } else {
            acc_t* acc = scratch.data();
            token_embedding(h + b * s.T * s.D, a + b * s.T, l, s.D, k, ff + o, cur + o, rem + o, acc, acc + s.D);
            for (int64_t d = 0; d < s.D; ++d) row[d] = static_cast<hid_t>(acc[d]);
          }
        }
      });
    });
  });
  return {embeds, sc.token_num, sc.fires, fire_frames};
}

// Backward for a fixed fire pattern (derivation in paraformer_ext/ops/cif.py). Per frame t < len with token
// k = fires before t:  grad_h[t] = w1 G[k] + w2 G[k+1]  (w2 only at a fire frame whose token k+1 exists),
// d1 = <G1, h[t]>, d2 = <G2, h[t]>;  grad_alpha[u] = d1[u] + sum_{t >= u} s[t],  s[t] = gF[t] + fire_t (d2 - d1).
std::tuple<at::Tensor, at::Tensor> cif_backward_cpu(const at::Tensor& grad_in, const c10::optional<at::Tensor>& grad_fires_in,
                                                    const at::Tensor& hidden_in, const at::Tensor& alphas_in,
                                                    const c10::optional<at::Tensor>& lengths, double threshold,
                                                    double tail_threshold) {
  const char* op = "paraformer_ext.cif_backward";
  const CifShape s = check_cif_args(hidden_in, alphas_in, threshold, tail_threshold, op);
  const at::Tensor gF = check_cif_backward_grads(grad_in, grad_fires_in, hidden_in, s, op);
  if (lengths.has_value()) check_same_device(*lengths, hidden_in, op, "lengths", "hidden");
  const at::Tensor len = checked_lengths(lengths, hidden_in, s.B, op);
  check_lengths_range(len, s.T, op);
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor alphas = alphas_in.contiguous();
  const at::Tensor G = grad_in.contiguous();
  const int64_t N = G.size(1);
  ScanResult sc = scan_all(alphas, lp, s, threshold, tail_threshold, true, op);
  const int64_t* cnt = sc.token_num.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b)
    TORCH_CHECK(cnt[b] <= N, op, ": grad_embeds has ", N, " rows but utterance ", b, " has ", cnt[b],
                " tokens; pass the gradient of the forward's acoustic_embeds");

  at::Tensor grad_h = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  at::Tensor grad_a = at::empty({s.B, s.T}, alphas.options());
  at::Tensor local = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kDouble));
  at::Tensor sarr = at::empty({s.B, s.Tf}, alphas.options().dtype(at::kDouble));
  if (s.B == 0) return {grad_h, grad_a};
  const int64_t* ff = sc.fire_frame.data_ptr<int64_t>();
  const double* cur = sc.cur.data_ptr<double>();
  const double* rem = sc.rem.data_ptr<double>();
  const int32_t* info = sc.frame_info.data_ptr<int32_t>();
  const double* gf = gF.defined() ? gF.data_ptr<double>() : nullptr;
  double* lo = local.data_ptr<double>();
  double* sa = sarr.data_ptr<double>();
  (void)ff;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_backward_cpu", [&] {
    using hid_t = scalar_t;
    using acc_t = at::opmath_type<hid_t>;
    AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_backward_cpu_alpha", [&] {
      using alpha_t = scalar_t;
      const hid_t* h = hidden.data_ptr<hid_t>();
      const hid_t* g = G.data_ptr<hid_t>();
      const alpha_t* a = alphas.data_ptr<alpha_t>();
      hid_t* gh = grad_h.data_ptr<hid_t>();
      alpha_t* ga = grad_a.data_ptr<alpha_t>();
      const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, s.D));
      at::parallel_for(0, s.B * s.Tf, grain, [&](int64_t begin, int64_t end) {
        for (int64_t w = begin; w < end; ++w) {
          const int64_t b = w / s.Tf, t = w % s.Tf;
          const int64_t l = lp ? lp[b] : s.T;
          const int64_t scanned = l + (s.has_tail ? 1 : 0);
          const double gft = (gf && t < scanned) ? gf[w] : 0.0;
          hid_t* ghr = t < s.T ? gh + (b * s.T + t) * s.D : nullptr;
          if (t >= l) {  // padded frame or the tail slot: zero hidden frame, no gradient to hidden or alpha
            if (ghr) std::fill(ghr, ghr + s.D, hid_t(0));
            lo[w] = 0.0;
            sa[w] = gft;
            continue;
          }
          const int32_t fi = info[w];
          const int64_t k = fi >> 1;
          const bool fire = fi & 1;
          const hid_t* g1 = nullptr;
          const hid_t* g2 = nullptr;
          acc_t w1 = 0, w2 = 0;
          const int64_t o = b * s.Tf;
          if (fire) {
            g1 = g + (b * N + k) * s.D;
            w1 = static_cast<acc_t>(cur[o + k]);
            if (k + 1 < cnt[b]) {
              g2 = g + (b * N + k + 1) * s.D;
              w2 = static_cast<acc_t>(rem[o + k]);
            }
          } else if (k < cnt[b]) {
            g1 = g + (b * N + k) * s.D;
            w1 = static_cast<acc_t>(a[b * s.T + t]);
          }
          const hid_t* hr = h + (b * s.T + t) * s.D;
          acc_t d1 = 0, d2 = 0;
          for (int64_t d = 0; d < s.D; ++d) {
            const acc_t hv = static_cast<acc_t>(hr[d]);
            const acc_t a1 = g1 ? static_cast<acc_t>(g1[d]) : acc_t(0);
            const acc_t a2 = g2 ? static_cast<acc_t>(g2[d]) : acc_t(0);
            ghr[d] = static_cast<hid_t>(w1 * a1 + w2 * a2);
            d1 += a1 * hv;
            d2 += a2 * hv;
          }
          lo[w] = static_cast<double>(d1);
          sa[w] = gft + (fire ? static_cast<double>(d2) - static_cast<double>(d1) : 0.0);
        }
      });
      at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t l = lp ? lp[b] : s.T;
          const int64_t scanned = l + (s.has_tail ? 1 : 0);
          double suffix = 0.0;
          for (int64_t t = scanned - 1; t >= l; --t) suffix += sa[b * s.Tf + t];
          for (int64_t t = l - 1; t >= 0; --t) {
            suffix += sa[b * s.Tf + t];
            ga[b * s.T + t] = static_cast<alpha_t>(lo[b * s.Tf + t] + suffix);
          }
          for (int64_t t = l; t < s.T; ++t) ga[b * s.T + t] = alpha_t(0);
        }
      });
    });
  });
  return {grad_h, grad_a};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) {
  m.impl("cif", &cif_cpu);
  m.impl("cif_backward", &cif_backward_cpu);
}

}  // namespace paraformer_ext
