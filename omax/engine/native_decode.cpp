// The decode step of omax.engine.fastpath.FastLlama in one native call.
//
// Python runs ~40 torch ops per layer for a decode step (rms_norm alone is eight),
// and at one stream their dispatch costs as much as the matmuls. Here the matmuls and
// attention are the same ATen kernels, and RMSNorm, rotary embedding with the KV
// write, and silu*mul are one loop each. Rows are bf16 tokens [R, H]; row i is cache
// slot i at position positions[i]. Built on first use by omax.engine.native.
//
// Attention has a kernel of its own where the CPU has AVX512-BF16 (torch's SDPA spends
// ~60 us a layer on one query row, mostly setting up): each row attends to exactly
// its own keys, in fp32 with a bf16 result, as SDPA computes it; the order of the
// sums differs, so the last bits of the output may.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define OMAX_ATTEND_KERNEL 1
#endif

using at::Tensor;
using c10::BFloat16;

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kLin = 3;  // tensors per linear: packed weight, scales, dense

Tensor lin(const std::vector<Tensor>& t, size_t at, int64_t kind, int64_t small, const Tensor& x) {
  const Tensor& w = t[at];
  if (kind != 0 && x.size(0) <= small) {
    if (kind == 4) return at::_weight_int4pack_mm_for_cpu(x, w, kGroup, t[at + 1]);
    return at::_weight_int8pack_mm(x, w, t[at + 1]);
  }
  return at::linear(x, t[at + 2]);
}

// RMSNorm of each row of h [R, H] (bf16) with weight w, in fp32, rounded to bf16.
Tensor rms_norm(const Tensor& h, const Tensor& w, double eps) {
  const int64_t r = h.size(0), n = h.size(1);
  Tensor out = at::empty_like(h);
  const BFloat16* x = h.data_ptr<BFloat16>();
  const BFloat16* g = w.data_ptr<BFloat16>();
  BFloat16* o = out.data_ptr<BFloat16>();
  for (int64_t i = 0; i < r; ++i) {
    const BFloat16* xi = x + i * n;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      const float v = static_cast<float>(xi[j]);
      acc += v * v;
    }
    const float rstd = 1.f / std::sqrt(acc / static_cast<float>(n) + static_cast<float>(eps));
    BFloat16* oi = o + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      oi[j] = static_cast<BFloat16>(static_cast<float>(xi[j]) * rstd * static_cast<float>(g[j]));
    }
  }
  return out;
}

// Rotary embedding of q and k (interleaved pairs) in y [R, (nh+2nkv)*hd]; k and v are
// written to the caches at (row, :, pos[row]); returns q [R, nh*hd].
Tensor rope_store(const Tensor& y, const Tensor& freqs, const std::vector<int64_t>& pos,
                  Tensor& kc, Tensor& vc, int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t r = y.size(0), width = y.size(1);
  Tensor q = at::empty({r, nh * hd}, y.options());
  const BFloat16* py = y.data_ptr<BFloat16>();
  const float* pf = reinterpret_cast<const float*>(freqs.data_ptr());  // complex64 -> (cos, sin)
  const int64_t half = hd / 2;
  BFloat16* pq = q.data_ptr<BFloat16>();
  BFloat16* pk = kc.data_ptr<BFloat16>();
  BFloat16* pv = vc.data_ptr<BFloat16>();
  const int64_t ks0 = kc.stride(0), ks1 = kc.stride(1), ks2 = kc.stride(2);
  for (int64_t i = 0; i < r; ++i) {
    const BFloat16* yi = py + i * width;
    const float* f = pf + pos[i] * half * 2;
    for (int64_t head = 0; head < nh + nkv; ++head) {
      BFloat16* dst = head < nh ? pq + i * nh * hd + head * hd
                                : pk + i * ks0 + (head - nh) * ks1 + pos[i] * ks2;
      const BFloat16* src = yi + head * hd;
      for (int64_t j = 0; j < half; ++j) {
        const float a = static_cast<float>(src[2 * j]), b = static_cast<float>(src[2 * j + 1]);
        const float c = f[2 * j], s = f[2 * j + 1];
        dst[2 * j] = static_cast<BFloat16>(a * c - b * s);
        dst[2 * j + 1] = static_cast<BFloat16>(a * s + b * c);
      }
    }
    const BFloat16* vsrc = yi + (nh + nkv) * hd;
    for (int64_t head = 0; head < nkv; ++head) {
      std::memcpy(pv + i * ks0 + head * ks1 + pos[i] * ks2, vsrc + head * hd, hd * sizeof(BFloat16));
    }
  }
  return q;
}

// silu(gu[:, :n]) * gu[:, n:], each rounded to bf16 as torch does.
Tensor silu_mul(const Tensor& gu) {
  const int64_t r = gu.size(0), n = gu.size(1) / 2;
  Tensor out = at::empty({r, n}, gu.options());
  const BFloat16* p = gu.data_ptr<BFloat16>();
  BFloat16* o = out.data_ptr<BFloat16>();
  for (int64_t i = 0; i < r; ++i) {
    const BFloat16* a = p + i * 2 * n;
    const BFloat16* b = a + n;
    BFloat16* oi = o + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float x = static_cast<float>(a[j]);
      const BFloat16 s = static_cast<BFloat16>(x / (1.f + std::exp(-x)));
      oi[j] = static_cast<BFloat16>(static_cast<float>(s) * static_cast<float>(b[j]));
    }
  }
  return out;
}

#ifdef OMAX_ATTEND_KERNEL
// e^x for x <= 0 (16 lanes): 2^n * 2^f, 2^f by its Taylor series to degree 7 on
// [-1/2, 1/2] (relative error ~1e-7).
__m512 exp_ps(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)),
                                 _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.525273e-5f);
  for (float c : {1.540353e-4f, 1.333355e-3f, 9.618129e-3f, 5.550411e-2f, 0.2402265f,
                  0.6931472f, 1.f}) {
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

// One query head of one row against keys 0..len of its KV head: q [hd] bf16, keys and
// values at k + t * step, v + t * step; writes o [hd] bf16. hd % 32 == 0, hd <= 256.
void attend_head(const BFloat16* q, const BFloat16* k, const BFloat16* v, int64_t step,
                 int64_t len, int64_t hd, float scale, float* s, BFloat16* o) {
  const int64_t chunks = hd / 32;
  __m512bh qv[8];
  for (int64_t c = 0; c < chunks; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
  float top = -INFINITY;
  for (int64_t t = 0; t < len; ++t) {
    const BFloat16* kt = k + t * step;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(kt + 32 * c), qv[c]);
    s[t] = _mm512_reduce_add_ps(acc) * scale;
    top = std::max(top, s[t]);
  }
  __m512 sum = _mm512_setzero_ps();
  const __m512 mx = _mm512_set1_ps(top);
  for (int64_t t = 0; t < len; t += 16) {
    const __mmask16 live = len - t >= 16 ? 0xffff : static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + t), mx));
    _mm512_mask_storeu_ps(s + t, live, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(live, e));
  }
  __m512 acc[16];
  const int64_t lanes = hd / 16;
  for (int64_t c = 0; c < lanes; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    const __m512 p = _mm512_set1_ps(s[t]);
    const BFloat16* vt = v + t * step;
    for (int64_t c = 0; c < lanes; ++c) {
      const __m512 x = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(vt + 16 * c)));
      acc[c] = _mm512_fmadd_ps(p, x, acc[c]);
    }
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
  for (int64_t c = 0; c < lanes; ++c)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 * c),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[c], inv)));
}
#endif

// Row i's query heads q [R, nh*hd] against keys 0..pos[i] of cache slot i -> [R, nh*hd].
Tensor attend(const Tensor& q, const Tensor& kc, const Tensor& vc,
              const std::vector<int64_t>& pos, int64_t length, const c10::optional<Tensor>& mask,
              int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t r = q.size(0), g = nh / nkv;
#ifdef OMAX_ATTEND_KERNEL
  if (hd % 32 == 0 && hd <= 256 && kc.stride(3) == 1 && kc.strides() == vc.strides()) {
    Tensor o = at::empty_like(q);
    const BFloat16* pq = q.data_ptr<BFloat16>();
    const BFloat16* pk = kc.data_ptr<BFloat16>();
    const BFloat16* pv = vc.data_ptr<BFloat16>();
    BFloat16* po = o.data_ptr<BFloat16>();
    const int64_t s0 = kc.stride(0), s1 = kc.stride(1), s2 = kc.stride(2);
    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    at::parallel_for(0, r * nh, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores(static_cast<size_t>(length));
      for (int64_t w = b; w < e; ++w) {
        const int64_t row = w / nh, h = w % nh, at = row * s0 + (h / g) * s1;
        attend_head(pq + w * hd, pk + at, pv + at, s2, pos[row] + 1, hd, scale, scores.data(),
                    po + w * hd);
      }
    });
    return o;
  }
#endif
  return at::scaled_dot_product_attention(q.view({r, nkv, g, hd}),
                                          kc.slice(0, 0, r).slice(2, 0, length),
                                          vc.slice(0, 0, r).slice(2, 0, length), mask)
      .view({r, -1});
}

}  // namespace

Tensor decode(const Tensor& ids, const std::vector<int64_t>& positions, int64_t length,
              const c10::optional<Tensor>& mask, const std::vector<Tensor>& t,
              const std::vector<int64_t>& kinds, const std::vector<int64_t>& smalls,
              std::vector<Tensor> kc, std::vector<Tensor> vc, const Tensor& freqs, int64_t nh,
              int64_t nkv, int64_t hd, double eps) {
  at::InferenceMode guard;
  const int64_t r = ids.size(0);
  const int64_t n_layers = static_cast<int64_t>(kc.size());
  const int64_t per_layer = 2 + 4 * kLin;
  const size_t tail = static_cast<size_t>(n_layers * per_layer);
  Tensor h = at::index_select(t[tail], 0, ids);
  for (int64_t i = 0; i < n_layers; ++i) {
    const size_t b = static_cast<size_t>(i * per_layer);
    const int64_t* kd = kinds.data() + 4 * i;
    const int64_t* sm = smalls.data() + 4 * i;
    Tensor y = lin(t, b + 1, kd[0], sm[0], rms_norm(h, t[b], eps));
    Tensor q = rope_store(y, freqs, positions, kc[i], vc[i], nh, nkv, hd);
    Tensor o = attend(q, kc[i], vc[i], positions, length, mask, nh, nkv, hd);
    h.add_(lin(t, b + 1 + kLin, kd[1], sm[1], o));
    Tensor gu = lin(t, b + 2 + 2 * kLin, kd[2], sm[2], rms_norm(h, t[b + 1 + 2 * kLin], eps));
    h.add_(lin(t, b + 2 + 3 * kLin, kd[3], sm[3], silu_mul(gu)));
  }
  return lin(t, tail + 2, kinds[4 * n_layers], smalls[4 * n_layers], rms_norm(h, t[tail + 1], eps))
      .to(at::kFloat);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The step runs without the GIL, like torch's own ops: the worker's event loop and
  // other threads keep running Python while it computes.
  m.def("decode", &decode, "one batched decode step of a FastLlama",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("attend", &attend, "rows' query heads against their own cached keys (decode attention)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
