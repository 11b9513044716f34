// Streaming CIF on the CPU (cif_stream.h): one stream per task; the slot loop is sequential and each channel's
// accumulation is its own, so a stream's result does not depend on the batch. Compiled with -ffp-contract=off
// (CMakeLists.txt): a*h must be rounded before it is added, as in FunASR's tensor arithmetic.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cif_stream.h"

namespace paraformer_ext {
namespace {

template <typename ct, typename hid_t>
void run_stream(const hid_t* h, const ct* a, int64_t len, int64_t T, int64_t D, ct carry_a, const ct* carry_h,
                bool final, ct thr, ct tail, std::vector<ct>& emitted, std::vector<int64_t>& slots, ct& out_a,
                ct* out_h) {
  std::vector<ct> acc(static_cast<size_t>(D), ct(0));
  ct I = ct(0);
  const int64_t n_slots = 1 + len + (final ? 1 : 0);
  for (int64_t s = 0; s < n_slots; ++s) {
    ct w;
    const hid_t* row = nullptr;  // null: the carried frame (ct) or the tail's zero frame
    if (s == 0) {
      w = carry_a;
    } else if (s <= len) {
      w = a[(s - 1)];
      row = h + (s - 1) * D;
    } else {
      w = tail;
    }
    // hidden is read as ct: half/bfloat16 widen exactly, float64 -> float32 rounds to nearest (torch's .to)
    auto frame = [&](int64_t d) -> ct { return s == 0 ? carry_h[d] : row ? static_cast<ct>(row[d]) : ct(0); };
    const ct sum = w + I;
    if (sum < thr) {
      I = sum;
      for (int64_t d = 0; d < D; ++d) {
        const ct p = w * frame(d);
        acc[d] = acc[d] + p;
      }
    } else {
      const ct rest = thr - I;
      const size_t base = emitted.size();
      emitted.resize(base + static_cast<size_t>(D));
      for (int64_t d = 0; d < D; ++d) {
        const ct p = rest * frame(d);
        emitted[base + d] = acc[d] + p;
      }
      slots.push_back(s);
      I = sum;
      I = I - thr;
      for (int64_t d = 0; d < D; ++d) acc[d] = I * frame(d);
    }
  }
  out_a = I;
  for (int64_t d = 0; d < D; ++d) out_h[d] = I > ct(0) ? acc[d] / I : acc[d];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cif_stream_cpu(
    const at::Tensor& hidden_, const at::Tensor& alphas_, const at::Tensor& lengths_, const at::Tensor& carry_alpha_,
    const at::Tensor& carry_hidden_, const at::Tensor& is_final_, double threshold, double tail_threshold) {
  const CifStreamShape sh = check_cif_stream(hidden_, alphas_, lengths_, carry_alpha_, carry_hidden_, is_final_);
  const int64_t B = sh.B, T = sh.T, D = sh.D;
  const at::Tensor hidden = hidden_.contiguous(), alphas = alphas_.contiguous(), lengths = lengths_.contiguous();
  const at::Tensor carry_alpha = carry_alpha_.contiguous(), carry_hidden = carry_hidden_.contiguous();
  const at::Tensor is_final = is_final_.contiguous();
  at::Tensor embeds, token_num = at::empty({B}, lengths.options()), fire_slots;
  at::Tensor out_a = at::empty({B}, alphas.options()), out_h = at::empty({B, D}, alphas.options());
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_stream_cpu", [&] {
    using ct = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_stream_cpu_hidden", [&] {
      using hid_t = scalar_t;
      std::vector<std::vector<ct>> emitted(static_cast<size_t>(B));
      std::vector<std::vector<int64_t>> slots(static_cast<size_t>(B));
      const hid_t* hp = hidden.data_ptr<hid_t>();
      const ct* ap = alphas.data_ptr<ct>();
      const int64_t* lp = lengths.data_ptr<int64_t>();
      const ct* cap = carry_alpha.data_ptr<ct>();
      const ct* chp = carry_hidden.data_ptr<ct>();
      const bool* fp = is_final.data_ptr<bool>();
      ct* oap = out_a.data_ptr<ct>();
      ct* ohp = out_h.data_ptr<ct>();
      const ct thr = static_cast<ct>(threshold), tail = static_cast<ct>(tail_threshold);
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          run_stream<ct, hid_t>(hp + b * T * D, ap + b * T, lp[b], T, D, cap[b], chp + b * D, fp[b], thr, tail,
                                emitted[b], slots[b], oap[b], ohp + b * D);
      });
      int64_t N = 0;
      for (int64_t b = 0; b < B; ++b) N = std::max<int64_t>(N, static_cast<int64_t>(slots[b].size()));
      embeds = at::zeros({B, N, D}, hidden.options());
      fire_slots = at::full({B, N}, -1, lengths.options());
      hid_t* ep = embeds.data_ptr<hid_t>();
      int64_t* sp = fire_slots.data_ptr<int64_t>();
      int64_t* np = token_num.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        const int64_t n = static_cast<int64_t>(slots[b].size());
        np[b] = n;
        for (int64_t k = 0; k < n; ++k) {
          sp[b * N + k] = slots[b][k];
          for (int64_t d = 0; d < D; ++d) ep[(b * N + k) * D + d] = static_cast<hid_t>(emitted[b][k * D + d]);
        }
      }
    });
  });
  return {embeds, token_num, fire_slots, out_a, out_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) { m.impl("cif_stream", &cif_stream_cpu); }

}  // namespace paraformer_ext
