#pragma once
// Input checks shared by every op. Kernels never guess: a wrong input is a TORCH_CHECK with the fix.
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

// Functions of small structs shared by the CPU and CUDA code.
#ifdef __CUDACC__
#define PFX_HD __host__ __device__ __forceinline__
#else
#define PFX_HD inline
#endif

namespace paraformer_ext {

inline void check_float_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                              const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b, " is on ",
              b.device(), "; move them to the same device");
}

// lengths: (B,) integer tensor on x's device with 0 <= lengths[b] <= T. Returns an int64 contiguous copy.
inline at::Tensor checked_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& x, int64_t B,
                                  const char* op) {
  if (!lengths.has_value()) return at::Tensor();
  const at::Tensor& l = *lengths;
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must have shape (B,) = (", B, ",), got ", l.sizes());
  TORCH_CHECK(!at::isFloatingType(l.scalar_type()) && !at::isComplexType(l.scalar_type()) &&
                  l.scalar_type() != at::kBool,
              op, ": lengths must be an integer tensor, got ", l.scalar_type());
  check_same_device(l, x, op, "lengths", "x");
  return l.to(at::kLong).contiguous();
}

// Every value of `len` (from checked_lengths; undefined: no lengths) in [0, T]. The kernels index frames by
// these lengths, so an out-of-range one must be an error, never a clamp that hides a caller's bug. CUDA
// lengths are copied to the host for the check: B values, but the copy waits for the device.
inline void check_lengths_range(const at::Tensor& len, int64_t T, const char* op) {
  if (!len.defined()) return;
  const at::Tensor h = len.is_cpu() ? len : len.cpu();
  const int64_t* lp = h.data_ptr<int64_t>();
  for (int64_t b = 0; b < h.size(0); ++b)
    TORCH_CHECK(lp[b] >= 0 && lp[b] <= T, op, ": lengths[", b, "] = ", lp[b], " is outside [0, T = ", T,
                "]; lengths must be in [0, T], the valid frames of each padded item");
}

}  // namespace paraformer_ext
