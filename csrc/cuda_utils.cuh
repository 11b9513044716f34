#pragma once
// Small helpers shared by the CUDA kernels.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace paraformer_ext {

// VEC elements moved as one 16-byte (or smaller) memory transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) VecT {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, T (&dst)[VEC]) {
  const VecT<T, VEC> tmp = *reinterpret_cast<const VecT<T, VEC>*>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) dst[i] = tmp.v[i];
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const T (&src)[VEC]) {
  VecT<T, VEC> tmp;
#pragma unroll
  for (int i = 0; i < VEC; ++i) tmp.v[i] = src[i];
  *reinterpret_cast<VecT<T, VEC>*>(p) = tmp;
}

// Float arithmetic rounded step by step (no FMA contraction): kernels that must equal a CPU twin bit for bit.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

inline bool is_aligned(const void* p, int64_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

__device__ __forceinline__ int64_t clamp_len(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t l = lengths[b];
  return l < 0 ? 0 : (l > T ? T : l);
}

}  // namespace paraformer_ext
