// Hotword biasing (spec hotwords.md §2): a beam search over one utterance's CIF positions that maximises
//   sum_t logp[t, y_t] + sum_{occurrences of hotword h in y} bonus_h
// with hypotheses merged by their Aho-Corasick state. The semantics, the graph layout and the tie rules are
// in paraformer_ext/ops/hotwords.py (hotword_decode_ref is the same algorithm in plain Python); this file must
// make the same decisions bit for bit, so every score is the same float64 expression in the same order.
//
// Host only: it runs once per utterance after the decoder pass, on O(N * V) posteriors already copied to the
// host; a CUDA version would serialise on the beam's data-dependent control flow and save nothing.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common.h"

namespace paraformer_ext {
namespace {

constexpr const char* kOp = "paraformer_ext.hotword_decode";

struct Graph {
  int64_t S = 0, E = 0;
  const int64_t* off = nullptr;     // (S + 1): node s's edges are [off[s], off[s + 1])
  const int64_t* edges = nullptr;   // (E, 2): [token, child], tokens increasing within a node
  const int64_t* nodes = nullptr;   // (S, 4): [fail, depth, word, dict_next]
  const double* scores = nullptr;   // (S, 2): [provisional bonus phi, completion bonus out]

  int64_t fail(int64_t s) const { return nodes[4 * s]; }
  int64_t depth(int64_t s) const { return nodes[4 * s + 1]; }
  int64_t word(int64_t s) const { return nodes[4 * s + 2]; }
  int64_t dict_next(int64_t s) const { return nodes[4 * s + 3]; }
  double phi(int64_t s) const { return scores[2 * s]; }
  double out(int64_t s) const { return scores[2 * s + 1]; }

  int64_t child(int64_t s, int64_t v) const {
    int64_t lo = off[s], hi = off[s + 1];
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      const int64_t tok = edges[2 * mid];
      if (tok == v) return edges[2 * mid + 1];
      if (tok < v) lo = mid + 1; else hi = mid;
    }
    return -1;
  }

  // The Aho-Corasick transition: the longest hotword prefix that is a suffix of (path(s), v).
  int64_t step(int64_t s, int64_t v) const {
    while (true) {
      const int64_t c = child(s, v);
      if (c >= 0) return c;
      if (s == 0) return 0;
      s = fail(s);
    }
  }
};

// Every structural property the search relies on (termination of the fail walks, binary search, indexing).
Graph check_graph(const at::Tensor& off, const at::Tensor& edges, const at::Tensor& nodes, const at::Tensor& scores,
                  int64_t V) {
  const char* fix = "; build the graph with paraformer_ext.hotwords.HotwordList.compile(tokens)";
  for (const auto* t : {&off, &edges, &nodes}) TORCH_CHECK(t->scalar_type() == at::kLong, kOp, ": graph index tensors must be int64, got ", t->scalar_type(), fix);
  TORCH_CHECK(scores.scalar_type() == at::kDouble, kOp, ": node_scores must be float64, got ", scores.scalar_type(), fix);
  for (const auto* t : {&off, &edges, &nodes, &scores}) TORCH_CHECK(t->device().is_cpu(), kOp, ": the graph must be on the CPU, got ", t->device());
  TORCH_CHECK(nodes.dim() == 2 && nodes.size(1) == 4 && nodes.size(0) >= 1, kOp, ": nodes must be (S >= 1, 4), got ", nodes.sizes(), fix);
  Graph g;
  g.S = nodes.size(0);
  TORCH_CHECK(off.dim() == 1 && off.size(0) == g.S + 1, kOp, ": child_offsets must be (S + 1,) = (", g.S + 1, ",), got ", off.sizes(), fix);
  TORCH_CHECK(edges.dim() == 2 && edges.size(1) == 2, kOp, ": edges must be (E, 2), got ", edges.sizes(), fix);
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == g.S && scores.size(1) == 2, kOp, ": node_scores must be (S, 2) = (", g.S, ", 2), got ", scores.sizes(), fix);
  g.E = edges.size(0);
  g.off = off.data_ptr<int64_t>();
  g.edges = edges.data_ptr<int64_t>();
  g.nodes = nodes.data_ptr<int64_t>();
  g.scores = scores.data_ptr<double>();
  TORCH_CHECK(g.off[0] == 0 && g.off[g.S] == g.E, kOp, ": child_offsets must start at 0 and end at E = ", g.E, fix);
  TORCH_CHECK(g.fail(0) == 0 && g.depth(0) == 0 && g.word(0) == -1, kOp, ": node 0 must be the root (fail 0, depth 0, no word)", fix);
  for (int64_t s = 0; s < g.S; ++s) {
    TORCH_CHECK(g.off[s] <= g.off[s + 1], kOp, ": child_offsets must be non-decreasing (node ", s, ")", fix);
    for (int64_t e = g.off[s]; e < g.off[s + 1]; ++e) {
      const int64_t tok = g.edges[2 * e], c = g.edges[2 * e + 1];
      TORCH_CHECK(tok >= 0 && tok < V, kOp, ": edge token ", tok, " is outside the vocabulary [0, ", V,
                  "); the graph was built for another token list", fix);
      TORCH_CHECK(e == g.off[s] || g.edges[2 * (e - 1)] < tok, kOp, ": edge tokens of node ", s, " must increase", fix);
      TORCH_CHECK(c >= 1 && c < g.S && g.depth(c) == g.depth(s) + 1, kOp, ": edge ", e, " leads to a bad node ", c, fix);
    }
    if (s > 0) {
      const int64_t f = g.fail(s), n = g.dict_next(s);
      TORCH_CHECK(f >= 0 && f < g.S && g.depth(f) < g.depth(s), kOp, ": fail[", s, "] must be a shallower node", fix);
      TORCH_CHECK(g.word(s) >= -1, kOp, ": word[", s, "] must be -1 or a hotword index", fix);
      TORCH_CHECK(n == -1 || (n > 0 && n < g.S && g.depth(n) < g.depth(s) && g.word(n) >= 0), kOp,
                  ": dict_next[", s, "] must be -1 or a shallower node that ends a hotword", fix);
    }
    TORCH_CHECK(std::isfinite(g.phi(s)) && std::isfinite(g.out(s)), kOp, ": node_scores must be finite", fix);
  }
  return g;
}

// Candidate: extend survivor `parent` (its index = its lexicographic rank) by `token` into `state`.
struct Cand {
  double score;  // sum of (logp - row max) + completed bonuses: the objective, without provisional bonuses
  int64_t state, parent, token;
};

// The one order of the search: higher score first, then the lexicographically smaller token sequence (the
// parent's rank, then the token), which makes zero bonuses reproduce argmax's lowest-index rule.
inline bool better(double sa, const Cand& a, double sb, const Cand& b) {
  if (sa != sb) return sa > sb;
  if (a.parent != b.parent) return a.parent < b.parent;
  return a.token < b.token;
}

std::tuple<at::Tensor, at::Tensor> hotword_decode_cpu(const at::Tensor& logp_in, const at::Tensor& child_offsets,
                                                      const at::Tensor& edges_in, const at::Tensor& nodes_in,
                                                      const at::Tensor& scores_in, int64_t beam, int64_t topk,
                                                      double margin, int64_t eos_id) {
  TORCH_CHECK(logp_in.dim() == 2, kOp, ": logp must be (N, V) log-posteriors of one utterance, got shape ", logp_in.sizes());
  TORCH_CHECK(logp_in.scalar_type() == at::kFloat, kOp, ": logp must be float32, got ", logp_in.scalar_type(),
              "; pass log_softmax(logits.float())");
  TORCH_CHECK(logp_in.device().is_cpu(), kOp, ": logp must be on the CPU (the search runs on the host), got ", logp_in.device());
  TORCH_CHECK(beam >= 1, kOp, ": beam must be >= 1, got ", beam);
  TORCH_CHECK(topk >= 1, kOp, ": topk must be >= 1, got ", topk);
  TORCH_CHECK(margin >= 0.0, kOp, ": margin must be >= 0 (inf: no limit), got ", margin);
  const int64_t N = logp_in.size(0), V = logp_in.size(1);
  TORCH_CHECK(N == 0 || V >= 1, kOp, ": logp has ", N, " positions but an empty vocabulary");
  TORCH_CHECK(eos_id >= -1 && eos_id < std::max<int64_t>(V, 1), kOp, ": eos_id must be -1 (none) or a token id < V = ", V, ", got ", eos_id);
  const at::Tensor off = child_offsets.contiguous(), edges = edges_in.contiguous(), nodes = nodes_in.contiguous();
  const at::Tensor scores = scores_in.contiguous();
  const Graph g = check_graph(off, edges, nodes, scores, V);
  const at::Tensor logp = logp_in.contiguous();
  const float* lp = logp.data_ptr<float>();
  const auto iopt = logp.options().dtype(at::kLong);
  at::Tensor ids = at::empty({N}, iopt);
  if (N == 0) return {ids, at::empty({0, 3}, iopt)};

  const int64_t K = std::min(topk, V);
  // Tokens that start a hotword (the root's edges): tested once per position, shared by every hypothesis.
  const int64_t* first = g.edges;
  const int64_t n_first = g.off[1];

  std::vector<Cand> prev{{0.0, 0, 0, 0}}, cands, merged;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> back(N);  // per position: survivors' (parent, token)
  std::vector<int64_t> slot(g.S, -1);
  std::vector<std::pair<float, int64_t>> top;
  std::vector<int64_t> shared, starts;
  std::vector<int64_t> seen(V, 0);  // seen[v] == stamp: v continues the current hypothesis' open match
  int64_t stamps = 0;
  std::vector<double> prio;
  std::vector<int64_t> order, rank;

  for (int64_t t = 0; t < N; ++t) {
    const float* row = lp + t * V;
    // top-K by (value desc, index asc); top[0] is argmax's lowest-index maximum
    top.clear();
    for (int64_t v = 0; v < V; ++v) {
      const float x = row[v];
      TORCH_CHECK(!std::isnan(x) && x != std::numeric_limits<float>::infinity(), kOp, ": logp[", t, ", ", v, "] = ", x,
                  "; log-posteriors must not be NaN or +inf");
      if ((int64_t)top.size() == K && !(x > top.back().first)) continue;
      auto it = top.begin();
      while (it != top.end() && !(x > it->first)) ++it;  // equal values keep the lower index first
      top.insert(it, {x, v});
      if ((int64_t)top.size() > K) top.pop_back();
    }
    const double mx = static_cast<double>(top[0].first);
    TORCH_CHECK(std::isfinite(mx), kOp, ": row ", t, " of logp is all -inf; log-posteriors need a finite maximum");
    auto d = [&](int64_t v) { return static_cast<double>(row[v]) - mx; };

    shared.clear();
    starts.clear();
    const bool forced = t == N - 1 && eos_id >= 0 && top[0].second == eos_id;
    if (forced) {
      shared.push_back(eos_id);  // `</s>` protected: the last position keeps it
    } else {
      for (const auto& p : top) shared.push_back(p.second);
      for (int64_t e = 0; e < n_first; ++e)
        if (d(first[2 * e]) >= -margin) starts.push_back(e);
    }

    cands.clear();
    // Hypotheses best first: a hotword start reaches the same state (the root's child) from every hypothesis
    // that has no continuation by its token, so only the best such hypothesis' candidate can survive the
    // merge below (same added terms, higher base; equal base: the lower parent rank, which `better` prefers).
    // Each start is therefore added once, from the first hypothesis in this order that may take it, instead of
    // once per hypothesis; the result is the same.
    rank.resize(prev.size());
    for (int64_t i = 0; i < (int64_t)prev.size(); ++i) rank[i] = i;
    std::sort(rank.begin(), rank.end(), [&](int64_t a, int64_t b) {
      return prev[a].score != prev[b].score ? prev[a].score > prev[b].score : a < b;
    });
    for (int64_t i : rank) {
      const int64_t s = prev[i].state;
      const double base = prev[i].score;
      auto add = [&](int64_t v) {
        const int64_t n = g.step(s, v);
        cands.push_back({base + d(v) + g.out(n), n, i, v});
      };
      for (int64_t v : shared) add(v);
      if (forced) continue;
      // continuations of the open partial match (and of its shorter suffixes) within the margin
      const int64_t stamp = ++stamps;  // a fresh mark per hypothesis, so `seen` is never cleared
      for (int64_t u = s; u != 0; u = g.fail(u))
        for (int64_t e = g.off[u]; e < g.off[u + 1]; ++e) {
          const int64_t v = g.edges[2 * e];
          if (d(v) >= -margin) add(v);
          seen[v] = stamp;
        }
      // hotword starts not yet added: unless a continuation above took the token, δ(s, v) is the root's
      // child, known without a search; the ones it took wait for the next hypothesis
      int64_t kept = 0;
      for (int64_t e : starts) {
        const int64_t v = first[2 * e], n = first[2 * e + 1];
        if (seen[v] != stamp)
          cands.push_back({base + d(v) + g.out(n), n, i, v});
        else
          starts[kept++] = e;
      }
      starts.resize(kept);
    }

    // merge by graph state: future scores depend only on the state, so the best per state is kept losslessly
    merged.clear();
    for (const Cand& c : cands) {
      int64_t& k = slot[c.state];
      if (k < 0) {
        k = (int64_t)merged.size();
        merged.push_back(c);
      } else if (better(c.score, c, merged[k].score, merged[k])) {
        merged[k] = c;
      }
    }
    for (const Cand& c : merged) slot[c.state] = -1;

    // survivors: the best by the objective (so the result never scores below greedy), then the best by
    // objective + provisional bonus (so open matches survive until they complete or fail)
    int64_t best = 0;
    for (int64_t k = 1; k < (int64_t)merged.size(); ++k)
      if (better(merged[k].score, merged[k], merged[best].score, merged[best])) best = k;
    prio.resize(merged.size());
    order.clear();
    for (int64_t k = 0; k < (int64_t)merged.size(); ++k) {
      prio[k] = merged[k].score + g.phi(merged[k].state);
      if (k != best) order.push_back(k);
    }
    const int64_t keep = std::min<int64_t>(beam - 1, (int64_t)order.size());
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
      return better(prio[a], merged[a], prio[b], merged[b]);
    });
    order.resize(keep);
    order.push_back(best);
    // store survivors in lexicographic order, so that a survivor's index is its rank for the next step
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      if (merged[a].parent != merged[b].parent) return merged[a].parent < merged[b].parent;
      return merged[a].token < merged[b].token;
    });
    prev.clear();
    back[t].clear();
    for (int64_t k : order) {
      prev.push_back(merged[k]);
      back[t].push_back({merged[k].parent, merged[k].token});
    }
  }

  // the final choice by the objective alone: an open match at the end earns nothing
  int64_t j = 0;
  for (int64_t k = 1; k < (int64_t)prev.size(); ++k)
    if (prev[k].score > prev[j].score) j = k;  // ties: the lower index, the lexicographically smaller sequence
  int64_t* out_ids = ids.data_ptr<int64_t>();
  for (int64_t t = N - 1; t >= 0; --t) {
    out_ids[t] = back[t][j].second;
    j = back[t][j].first;
  }

  // which hotwords the chosen sequence contains: (word, start, end) by end position, longest first
  std::vector<int64_t> fired;
  int64_t s = 0;
  for (int64_t t = 0; t < N; ++t) {
    s = g.step(s, out_ids[t]);
    for (int64_t u = g.word(s) >= 0 ? s : g.dict_next(s); u >= 0; u = g.dict_next(u)) {
      fired.push_back(g.word(u));
      fired.push_back(t + 1 - g.depth(u));
      fired.push_back(t + 1);
    }
  }
  at::Tensor spans = at::empty({(int64_t)fired.size() / 3, 3}, iopt);
  std::copy(fired.begin(), fired.end(), spans.data_ptr<int64_t>());
  return {ids, spans};
}

}  // namespace

TORCH_LIBRARY_IMPL(paraformer_ext, CPU, m) { m.impl("hotword_decode", &hotword_decode_cpu); }

}  // namespace paraformer_ext
