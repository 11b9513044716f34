#pragma once
// CIF (continuous integrate-and-fire, spec paraformer.md §3.4): argument checks and the per-frame arithmetic
// shared by the CPU and CUDA implementations, so that both make bit-identical fire decisions.
//
// The truth is the sequential float64 loop of §3.4, run over an utterance's valid frames t < len and then,
// when tail_threshold > 0, one tail slot (index len, weight tail_threshold, hidden frame zero):
//
//   I_pre = I + a_t;  fires[t] = I_pre;  fire = I_pre >= threshold
//   fire:  cur = 1 - I (I before the add), rem = a_t - cur, I = I_pre - 1    (at most one fire per frame)
//   else:  I = I_pre
//
// Token k's embedding is rem_{k-1} h[f_{k-1}] + sum_{f_{k-1} < t < f_k} a_t h[t] + cur_k h[f_k] (f = fire frames;
// token 0 starts at frame 0 with no rem term). The scan produces, per utterance, the fire frames and the
// (cur, rem) weights of each fire in float64; the embedding pass then needs no more decisions.
//
// Exact fast path: when threshold == 1 and every valid alpha (as float64) is in [0, 1) and a multiple of 2^-52
// (every float32 alpha >= 2^-29 or == 0 is), the float64 loop above never rounds: I stays in [0, 1), every
// I_pre = I + a < 2 is a multiple of 2^-52 and therefore representable, and "- 1" is exact. The loop then equals
// exact arithmetic, which equals 64-bit fixed-point arithmetic with 52 fractional bits taken modulo 2^64:
// Q_t = sum_{u<=t} a_u 2^52 (mod 2^64), I_t = (Q_t mod 2^52) 2^-52, and frame t fires iff adding a_t carried
// into bit 52. Integer addition is associative, so the CUDA scan computes this in parallel and still gives
// the loop's bits (fires values, decisions, cur, rem). Inputs outside that set (float64 alphas, alphas >= 1,
// tiny alphas, threshold != 1) take the sequential float64 loop itself.
#include <cmath>
#include <cstdint>

#include "common.h"

#if defined(__CUDACC__)
#define CIF_HD __host__ __device__ __forceinline__
#else
#define CIF_HD inline
#endif

namespace paraformer_ext {
namespace cif {

constexpr double kFixScale = 4503599627370496.0;       // 2^52
constexpr double kFixUnit = 1.0 / 4503599627370496.0;  // 2^-52
constexpr uint64_t kFracMask = (uint64_t(1) << 52) - 1;
constexpr uint64_t kOne = uint64_t(1) << 52;

// Input error bits, OR-ed per batch and reported by the host (CUDA reports them after its one sync).
constexpr int kBadAlpha = 1;   // a valid frame's alpha is negative, NaN or infinite
constexpr int kBadLength = 2;  // lengths[b] outside [0, T]

// alpha (float64) -> fixed point with 52 fractional bits; false when the fast path cannot represent it exactly.
CIF_HD bool to_fixed(double a, uint64_t& out) {
  if (!(a >= 0.0 && a < 1.0)) return false;
  const double y = a * kFixScale;  // exact: scaling by a power of two
  if (y != ::floor(y)) return false;
  out = static_cast<uint64_t>(y);
  return true;
}

CIF_HD bool alpha_ok(double a) { return a >= 0.0 && a <= 1.7976931348623157e308; }  // false for NaN, +-inf, < 0

// Where one utterance's scan writes its results (row pointers; frame_info may be null).
template <typename alpha_t>
struct ScanRow {
  alpha_t* fires;       // (Tf): I_pre at scanned frames, 0 past them
  int64_t* fire_frame;  // (Tf): frame of the k-th fire, k < count
  double* cur;          // (Tf): weight of the k-th fire's frame in token k
  double* rem;          // (Tf): weight of the k-th fire's frame in token k+1
  int32_t* frame_info;  // (Tf) or null: 2 * (fires before t) + (t fires), -1 past the scanned frames
};

template <typename alpha_t>
CIF_HD void record_fire(const ScanRow<alpha_t>& r, int64_t k, int64_t t, double cur, double rem) {
  r.fire_frame[k] = t;
  r.cur[k] = cur;
  r.rem[k] = rem;
}

// One step of the float64 loop; returns whether frame t fired. `count` is the number of fires so far.
template <typename alpha_t>
CIF_HD bool loop_step(double a, int64_t t, double threshold, double& I, int64_t& count, const ScanRow<alpha_t>& r) {
  const double prev = I;
  const double pre = prev + a;
  r.fires[t] = static_cast<alpha_t>(pre);
  const bool fire = pre >= threshold;
  if (r.frame_info) r.frame_info[t] = static_cast<int32_t>(2 * count + (fire ? 1 : 0));
  if (fire) {
    const double cur = 1.0 - prev;
    record_fire(r, count, t, cur, a - cur);
    ++count;
    I = pre - 1.0;
  } else {
    I = pre;
  }
  return fire;
}

// One step of the exact fixed-point form (valid only under the fast-path conditions above); q is the running
// sum modulo 2^64, of which only the low 52 bits (the integrate) matter.
template <typename alpha_t>
CIF_HD bool fixed_step(uint64_t A, int64_t t, uint64_t& q, int64_t& count, const ScanRow<alpha_t>& r) {
  const uint64_t frac = q & kFracMask;
  const uint64_t pre = frac + A;  // < 2^53: exact as a double
  r.fires[t] = static_cast<alpha_t>(static_cast<double>(pre) * kFixUnit);
  const bool fire = pre >= kOne;
  if (r.frame_info) r.frame_info[t] = static_cast<int32_t>(2 * count + (fire ? 1 : 0));
  if (fire) {
    record_fire(r, count, t, static_cast<double>(kOne - frac) * kFixUnit, static_cast<double>(pre - kOne) * kFixUnit);
    ++count;
  }
  q += A;
  return fire;
}

}  // namespace cif

struct CifShape {
  int64_t B, T, D;
  int64_t Tf;  // columns of fires: T + 1 with a tail slot, else T
  bool has_tail;
};

inline CifShape check_cif_args(const at::Tensor& hidden, const at::Tensor& alphas, double threshold,
                               double tail_threshold, const char* op) {
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must be (B, T, D), got shape ", hidden.sizes());
  TORCH_CHECK(alphas.dim() == 2, op, ": alphas must be (B, T), got shape ", alphas.sizes(),
              " (squeeze the predictor's trailing 1)");
  check_float_tensor(hidden, op, "hidden");
  TORCH_CHECK(alphas.scalar_type() == at::kFloat || alphas.scalar_type() == at::kDouble, op,
              ": alphas must be float32 or float64, got ", alphas.scalar_type(),
              "; compute the predictor's sigmoid in float32 (FunASR runs it outside autocast)");
  check_same_device(alphas, hidden, op, "alphas", "hidden");
  TORCH_CHECK(alphas.size(0) == hidden.size(0) && alphas.size(1) == hidden.size(1), op, ": alphas ", alphas.sizes(),
              " must be (B, T) of hidden ", hidden.sizes());
  TORCH_CHECK(std::isfinite(threshold) && threshold > 0.0, op, ": threshold must be a finite number > 0, got ",
              threshold);
  TORCH_CHECK(std::isfinite(tail_threshold) && tail_threshold >= 0.0, op,
              ": tail_threshold must be a finite number >= 0 (0 disables the tail), got ", tail_threshold);
  TORCH_CHECK(hidden.size(1) < (int64_t(1) << 30), op, ": T = ", hidden.size(1),
              " frames is too long (limit 2^30); split the utterance");
  CifShape s{hidden.size(0), hidden.size(1), hidden.size(2), hidden.size(1), tail_threshold > 0.0};
  if (s.has_tail) s.Tf += 1;
  return s;
}

inline void check_cif_errors(int flags, const char* op) {
  TORCH_CHECK(!(flags & cif::kBadLength), op, ": lengths must lie in [0, T]");
  TORCH_CHECK(!(flags & cif::kBadAlpha), op,
              ": alphas must be finite and >= 0 at every valid frame (frames past lengths[b] are ignored)");
}

// cif_backward's incoming gradients: grad_embeds (B, N, D) like hidden, and grad_fires (B, Tf) or absent.
// Returns grad_fires as contiguous float64 (undefined when absent).
inline at::Tensor check_cif_backward_grads(const at::Tensor& grad, const c10::optional<at::Tensor>& grad_fires,
                                           const at::Tensor& hidden, const CifShape& s, const char* op) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == s.B && grad.size(2) == s.D, op,
              ": grad_embeds must be (B, N, D) with B, D of hidden ", hidden.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == hidden.scalar_type(), op, ": grad_embeds dtype ", grad.scalar_type(),
              " differs from hidden dtype ", hidden.scalar_type());
  check_same_device(grad, hidden, op, "grad_embeds", "hidden");
  if (!grad_fires.has_value() || !grad_fires->defined()) return at::Tensor();
  TORCH_CHECK(grad_fires->dim() == 2 && grad_fires->size(0) == s.B && grad_fires->size(1) == s.Tf, op,
              ": grad_fires must be (B, ", s.Tf, "), got ", grad_fires->sizes());
  check_same_device(*grad_fires, hidden, op, "grad_fires", "hidden");
  return grad_fires->to(at::kDouble).contiguous();
}

}  // namespace paraformer_ext
