#pragma once
// FSMN memory block: shared argument checking and the strided view both backends read from.
#include "common.h"

namespace paraformer_ext {

struct FsmnShape {
  int64_t B, T, D, K, left;
};

// A (B, T, D) tensor read through its batch and time strides; channels must be contiguous (stride 1), so a
// column slice of a wider projection (V inside QKV) is read in place, without a copy.
template <typename T>
struct Rows {
  const T* p;
  int64_t sb, st;
  PFX_HD const T* row(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};

// Make the channel dimension contiguous (a no-op for row slices of a contiguous tensor).
inline at::Tensor channels_contiguous(const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

inline FsmnShape check_fsmn_args(const at::Tensor& x, const at::Tensor& weight, int64_t left, const char* op) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, T, D), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be (D, K) (a Conv1d depthwise weight (D, 1, K) squeezed), got ",
              weight.sizes());
  check_float_tensor(x, op, "x");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ", weight.scalar_type(),
              " differs from x dtype ", x.scalar_type(), "; cast the weight with .to(x.dtype)");
  check_same_device(weight, x, op, "weight", "x");
  FsmnShape s{x.size(0), x.size(1), x.size(2), weight.size(1), left};
  TORCH_CHECK(weight.size(0) == s.D, op, ": weight has ", weight.size(0), " channels but x has D = ", s.D);
  TORCH_CHECK(s.K >= 1, op, ": kernel size must be >= 1, got ", s.K);
  TORCH_CHECK(left >= 0 && left < s.K, op, ": left must be in [0, K-1] = [0, ", s.K - 1, "], got ", left);
  return s;
}

inline void check_residual(const c10::optional<at::Tensor>& residual, const at::Tensor& x, const char* op) {
  if (!residual.has_value()) return;
  TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
              residual->sizes());
  TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual dtype ", residual->scalar_type(),
              " differs from x dtype ", x.scalar_type());
  check_same_device(*residual, x, op, "residual", "x");
}

inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& x, const char* op) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(2), op, ": bias must be (D,) = (", x.size(2), ",), got ",
              bias->sizes());
  TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op, ": bias dtype ", bias->scalar_type(), " differs from x dtype ",
              x.scalar_type());
  check_same_device(*bias, x, op, "bias", "x");
}

// Everything fsmn_memory reads, checked (the same on both backends): x, weight, left, residual, bias, and the
// lengths as an int64 tensor in [0, T] (undefined when absent).
struct FsmnArgs {
  FsmnShape s;
  at::Tensor len;
};

inline FsmnArgs check_fsmn_forward_args(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& lengths, int64_t left,
                                        const c10::optional<at::Tensor>& residual,
                                        const c10::optional<at::Tensor>& bias, const char* op) {
  const FsmnShape s = check_fsmn_args(x, weight, left, op);
  check_residual(residual, x, op);
  check_bias(bias, x, op);
  at::Tensor len = checked_lengths(lengths, x, s.B, op);
  check_lengths_range(len, s.T, op);
  return {s, len};
}

// fsmn_memory_weight_grad: grad_out like x (B, T, D), a kernel of kernel_size taps with `left` of them to the
// left, lengths as in the forward.
inline FsmnArgs check_fsmn_weight_grad_args(const at::Tensor& grad, const at::Tensor& x,
                                            const c10::optional<at::Tensor>& lengths, int64_t left,
                                            int64_t kernel_size, const char* op) {
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad_out ", grad.sizes(), " and x ", x.sizes(),
              " must have the same shape");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad_out and x must have the same dtype");
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, T, D), got ", x.sizes());
  check_float_tensor(x, op, "x");
  check_same_device(grad, x, op, "grad_out", "x");
  TORCH_CHECK(kernel_size >= 1 && left >= 0 && left < kernel_size, op, ": need 0 <= left < kernel_size, got left=",
              left, " kernel_size=", kernel_size);
  const FsmnShape s{x.size(0), x.size(1), x.size(2), kernel_size, left};
  at::Tensor len = checked_lengths(lengths, x, s.B, op);
  check_lengths_range(len, s.T, op);
  return {s, len};
}

}  // namespace paraformer_ext
