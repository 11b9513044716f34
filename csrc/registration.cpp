// Every op's schema, in one place. Implementations register per backend in <op>_cpu.cpp / <op>_cuda.cu;
// fake (meta) implementations and autograd live in Python (paraformer_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY(paraformer_ext, m) {
  // FSMN memory block (spec paraformer.md §4.5): out = residual + mask * (xm + dwconv(xm)) + bias, xm = mask * x.
  // x: (B, T, D); weight: (D, K); lengths: (B,) int64 or None (all frames valid); left: taps before t.
  // residual (B, T, D) and bias (D,) are added after the mask (the encoder adds both to the memory).
  m.def("fsmn_memory(Tensor x, Tensor weight, Tensor? lengths, int left, Tensor? residual, Tensor? bias=None) -> Tensor");
  // Gradient of fsmn_memory's weight: grad_weight[d, j] = sum_{b,t} g'[b,t,d] * xm[b, t+j-left, d].
  m.def("fsmn_memory_weight_grad(Tensor grad_out, Tensor x, Tensor? lengths, int left, int kernel_size) -> Tensor");
}
