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

}  // namespace paraformer_ext
