// The decode step of omax.engine.fastpath.FastDecoder in one native call, for every
// family the fast path runs (what differs between them is data: Model's optional
// tensors and scalars, after omax.engine.arch.Arch). Model::step runs prompt rows in
// the same call (a cache slot a row; FastRunner._native_step).
//
// Python runs ~40 torch ops per layer for a decode step (rms_norm alone is eight),
// and at one stream their dispatch costs as much as the matmuls. Here RMSNorm, the
// qkv bias + QK norm + rotary embedding with the KV write, and silu*mul (gelu*mul) are
// one loop each, and attention and the packed matmuls have kernels of their own
// (below), torch's where the CPU lacks the instructions. Rows are bf16 tokens [R, H];
// row i is cache slot i at position positions[i]. Built by omax.engine.native.
//
// Attention has a kernel of its own where the CPU has AVX512-BF16 (torch's SDPA spends
// most of a one-query-row call setting up): each row attends to exactly
// its own keys (those in its sliding window), in fp32 with a bf16 result, as SDPA
// computes it (gemma2's soft-capped scores: in fp32, where the Python step rounds them
// to bf16 between its ops); the order of the sums differs, so the last bits of the
// output may.
//
// So do the matmuls where the CPU has the instructions (AVX512-BF16 and VBMI), on the
// same weights as torch's kernels (the Python step uses those): int4 on torch's packed
// weights for any row count, int8 for up to 4 rows, and the dense bf16 copy past that
// (an int8 head) or without packed weights. A decode step reads every weight once, from
// memory: these prefetch ahead of their reads (benchmarks/RESULTS.md compares them with
// torch's kernels).
//
// These kernels split their work over a Team of their own, not OpenMP: a step runs
// ~150 short parallel loops, and libgomp lets its idle threads spin between loops
// only while no more threads belong to its teams than there are cores. A second
// thread that ever ran a parallel region (a model loaded in one thread and decoded
// in another, a second model, an embedding thread) brings its own pool, and then every
// loop ends in a futex sleep and wake-up, which for loops this short costs more than
// their work.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__)
#define OMAX_ATTEND_KERNEL 1
#endif

using at::Tensor;
using c10::BFloat16;

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// The calling thread and n - 1 workers. Between loops the workers spin (a step's
// loops follow each other closely, and a sleep and wake-up between two would cost
// more than the loop); after kSpin without work they sleep
// until the next loop, so an idle model leaves the cores to the rest of the process.
class Team {
 public:
  explicit Team(int n) : n_(n) {
    for (int i = 1; i < n; ++i) threads_.emplace_back([this] { work(); });
  }

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int size() const { return n_; }

  // f(b, e) over [begin, end) in contiguous parts of at least grain, as
  // at::parallel_for; returns when every part is done. The parts (up to kParts per
  // thread) are claimed one by one, so a thread the OS preempts (the worker's event
  // loop, another process) holds up only the part it is in: the others take the rest
  // instead of waiting for its fixed share.
  template <typename F>
  void run(int64_t begin, int64_t end, int64_t grain, const F& f) {
    const int64_t range = end - begin;
    if (range <= 0) return;
    int64_t parts =
        std::min<int64_t>(kParts * n_, (range + grain - 1) / std::max<int64_t>(grain, 1));
    if (n_ <= 1 || parts <= 1) {
      f(begin, end);
      return;
    }
    step_ = (range + parts - 1) / parts;
    parts_ = (range + step_ - 1) / step_;
    begin_ = begin;
    end_ = end;
    ctx_ = &f;
    call_ = [](const void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); };
    next_.store(0);
    pending_.store(n_ - 1);
    gen_.fetch_add(1);  // publishes the fields above to the workers
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lock(m_);
      cv_.notify_all();
    }
    drain();
    while (pending_.load(std::memory_order_acquire) != 0) cpu_relax();
  }

 private:
  static constexpr auto kSpin = std::chrono::microseconds(200);
  static constexpr int64_t kParts = 4;

  void drain() {
    for (int64_t i = next_.fetch_add(1); i < parts_; i = next_.fetch_add(1)) {
      const int64_t b = begin_ + i * step_;
      call_(ctx_, b, std::min(end_, b + step_));
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = gen_.load();
      auto idle = std::chrono::steady_clock::now();
      for (int spins = 1; g == seen; ++spins) {
        cpu_relax();
        if (spins % 256 == 0) {
          if (stop_.load()) return;
          if (std::chrono::steady_clock::now() - idle > kSpin) {
            std::unique_lock<std::mutex> lock(m_);
            sleeping_.fetch_add(1);
            cv_.wait(lock, [&] { return stop_.load() || gen_.load() != seen; });
            sleeping_.fetch_sub(1);
            if (stop_.load()) return;
          }
        }
        g = gen_.load();
      }
      seen = g;
      drain();
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  const int n_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int64_t> next_{0};  // the next part to claim
  std::atomic<int> pending_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::condition_variable cv_;
  void (*call_)(const void*, int64_t, int64_t) = nullptr;
  const void* ctx_ = nullptr;
  int64_t begin_ = 0, end_ = 0, step_ = 1, parts_ = 0;
};

// The calling thread's team, as many threads as torch gives this thread.
Team& team() {
  thread_local std::unique_ptr<Team> t;
  const int n = std::max(1, at::get_num_threads());
  if (!t || t->size() != n) t = std::make_unique<Team>(n);
  return *t;
}

// Whether this thread's kernels use its Team (else OpenMP, via at::parallel_for): only
// inside Model::decode, and there only with this file's own kernels (kOwnKernels). A
// kernel called on its own (the Python step's linears, between torch's ops) runs on
// OpenMP, the pool of the ops around it: the Team's workers, spinning after a loop,
// would take a core from the OpenMP threads of the op that follows, and those, spinning
// after theirs, from the Team's (on 2 cores a prefill step ran 1.6x slower).
thread_local bool use_team = false;

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (use_team)
    team().run(begin, end, grain, f);
  else
    at::parallel_for(begin, end, grain, f);
}

constexpr int64_t kGroup = 32;
constexpr int64_t kLin = 3;  // tensors per linear: packed weight, scales, dense

// The packed weights stream from memory (a model is larger than the cache): the
// kernels prefetch this many bytes ahead of what they read.
constexpr int64_t kAhead = 8192;
// and the int4 kernels a group's scales this many groups ahead
constexpr int64_t kScalesAhead = 4;

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#define OMAX_INT4_KERNEL 1
// torch's CPU int4 pack (_convert_weight_to_int4pack_for_cpu, torch 2.13): w [N, K/2]
// uint8 holds blocks of 64 output rows; in a block, each k has 32 bytes, byte j
// holding row j in its low nibble and row 32 + j in its high one. Scales and zeros
// sz [K/32, N, 2] bf16: w = (q - 8) * s + z. A pair of k's (64 bytes, one load) goes
// through bf16 dot products (vdpbf16ps) with q entering as the bf16 128 + q (bits
// 0x4300 | q, exact), so per group of 32 and row n the dot a = sum x q + 128 X where
// X = sum x; then y += s a + (z - 136 s) X.

// vpermt2b indices: 32-bit lane i gets (row byte 16 p + i of k, 0x43, of k + 1, 0x43).
__m512i pair_index(int p) {
  alignas(64) uint8_t b[64];
  for (int i = 0; i < 16; ++i) {
    b[4 * i] = static_cast<uint8_t>(16 * p + i);
    b[4 * i + 1] = 64;  // the second table: all 0x43
    b[4 * i + 2] = static_cast<uint8_t>(32 + 16 * p + i);
    b[4 * i + 3] = 64;
  }
  return _mm512_load_si512(b);
}

// The unpacking the int4 kernels share: a pair of k's for the 64 output rows of a
// block (64 bytes) into four vectors of bf16 pairs 128 + q (16 rows each), and a
// group's scales s and offsets zc = z - 136 s for those rows.
//
// 5-bit codes (linear.Lin "int5": GGUF Q5_0, Q5_1, Q5_K) keep their low four bits in
// the same layout and their fifth in a plane hb [N / 64][K / 2][4] uint32: for a block
// and a pair of k's, word q holds rows 16 q .. 16 q + 15, bit 2 i the code of row
// 16 q + i at the even k and bit 2 i + 1 at the odd one, the order of out[q]'s bf16
// elements. Adding 16 to the elements its bits select makes them 128 + q for q up to
// 31, still exact in bf16, and every sum below holds for any q.
struct Int4Unpack {
  const __m512i i0 = pair_index(0), i1 = pair_index(1);
  const __m512i c43 = _mm512_set1_epi8(0x43), m0f = _mm512_set1_epi8(0x0f);
  const __m512i c16 = _mm512_set1_epi16(16);
  const __m512i hi16 = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512 c136 = _mm512_set1_ps(136.f);

  // hb: the pair's four words of the fifth-bit plane, or null for 4-bit codes.
  void pair(const uint8_t* wp, __m512i* out, const uint32_t* hb = nullptr) const {
    _mm_prefetch(reinterpret_cast<const char*>(wp + kAhead), _MM_HINT_T0);
    const __m512i v = _mm512_loadu_si512(wp);
    const __m512i lo = _mm512_and_si512(v, m0f);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
    out[0] = _mm512_permutex2var_epi8(lo, i0, c43);
    out[1] = _mm512_permutex2var_epi8(lo, i1, c43);
    out[2] = _mm512_permutex2var_epi8(hi, i0, c43);
    out[3] = _mm512_permutex2var_epi8(hi, i1, c43);
    if (hb != nullptr) {
      _mm_prefetch(reinterpret_cast<const char*>(hb) + kAhead / 4, _MM_HINT_T0);
      for (int q = 0; q < 4; ++q)
        out[q] = _mm512_mask_add_epi16(out[q], static_cast<__mmask32>(hb[q]), out[q], c16);
    }
  }

  // A group's scales for a block (256 bytes) lie n_out * 4 bytes from the previous
  // group's, a page or more apart, where no hardware prefetcher follows: without this
  // the one-row kernel waited on them more than on the weights.
  static void prefetch_scales(const BFloat16* sg) {
    for (int c = 0; c < 256; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(sg) + c, _MM_HINT_T0);
  }

  void scales(const BFloat16* sg, __m512* s, __m512* zc) const {
    for (int q = 0; q < 4; ++q) {
      const __m512i lane = _mm512_loadu_si512(sg + q * 32);  // (s, z) of 16 rows
      s[q] = _mm512_castsi512_ps(_mm512_slli_epi32(lane, 16));
      zc[q] = _mm512_fnmadd_ps(c136, s[q], _mm512_castsi512_ps(_mm512_and_si512(lane, hi16)));
    }
  }
};

// a[m][q] += row m's pair of x at column ``at`` . the unpacked pair w[q], for MT rows.
template <int MT>
inline void dot_pair(__m512 (*a)[4], const BFloat16* x, int64_t k_in, int64_t at,
                     const __m512i* w) {
  for (int m = 0; m < MT; ++m) {
    int32_t pair;
    std::memcpy(&pair, x + m * k_in + at, sizeof(pair));
    const __m512bh xp = (__m512bh)_mm512_set1_epi32(pair);
    for (int q = 0; q < 4; ++q) a[m][q] = _mm512_dpbf16_ps(a[m][q], (__m512bh)w[q], xp);
  }
}

template <typename Out>
inline void store16(Out* dst, __m512 v) {
  if constexpr (std::is_same_v<Out, float>)
    _mm512_storeu_ps(dst, v);
  else
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
}

// Rows m0..m0+MT of y [M, N] for the output block nb (64 rows of w).
template <int MT, typename Out>
void int4_block(const BFloat16* x, const float* sums, const uint8_t* w, const BFloat16* sz,
                const uint32_t* hb, Out* y, int64_t n_out, int64_t k_in, int64_t nb) {
  const int64_t groups = k_in / kGroup;
  const Int4Unpack u;
  const uint8_t* wb = w + nb * 64 * (k_in / 2);
  const uint32_t* hbb = hb == nullptr ? nullptr : hb + nb * (k_in / 2) * 4;
  __m512 o[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int q = 0; q < 4; ++q) o[m][q] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    if (g + kScalesAhead < groups)
      Int4Unpack::prefetch_scales(sz + ((g + kScalesAhead) * n_out + nb * 64) * 2);
    __m512 a[MT][4];
    for (int m = 0; m < MT; ++m)
      for (int q = 0; q < 4; ++q) a[m][q] = _mm512_setzero_ps();
    const uint8_t* wg = wb + g * kGroup * 32;
    for (int p = 0; p < kGroup / 2; ++p) {
      __m512i wp[4];
      u.pair(wg + p * 64, wp, hbb == nullptr ? nullptr : hbb + (g * kGroup / 2 + p) * 4);
      dot_pair<MT>(a, x, k_in, g * kGroup + 2 * p, wp);
    }
    __m512 s[4], zc[4];
    u.scales(sz + (g * n_out + nb * 64) * 2, s, zc);
    for (int q = 0; q < 4; ++q)
      for (int m = 0; m < MT; ++m) {
        o[m][q] = _mm512_fmadd_ps(s[q], a[m][q], o[m][q]);
        o[m][q] = _mm512_fmadd_ps(zc[q], _mm512_set1_ps(sums[m * groups + g]), o[m][q]);
      }
  }
  for (int m = 0; m < MT; ++m)
    for (int q = 0; q < 4; ++q) store16(y + m * n_out + nb * 64 + 16 * q, o[m][q]);
}

// MT rows' dot products with one group's unpacked weights (buf: 16 pairs x 4 vectors),
// added to acc [MT, 64] as int4_block does to its registers.
template <int MT>
void int4_tile(const BFloat16* x, const float* sums, int64_t k_in, int64_t groups, int64_t g,
               const __m512i* buf, const __m512* s, const __m512* zc, float* acc) {
  __m512 a[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int q = 0; q < 4; ++q) a[m][q] = _mm512_setzero_ps();
  for (int p = 0; p < kGroup / 2; ++p) dot_pair<MT>(a, x, k_in, g * kGroup + 2 * p, buf + 4 * p);
  for (int m = 0; m < MT; ++m) {
    const __m512 sum = _mm512_set1_ps(sums[m * groups + g]);
    for (int q = 0; q < 4; ++q) {
      float* o = acc + m * 64 + 16 * q;
      __m512 v = _mm512_fmadd_ps(s[q], a[m][q], _mm512_loadu_ps(o));
      _mm512_storeu_ps(o, _mm512_fmadd_ps(zc[q], sum, v));
    }
  }
}

// All rows of y [M, N] for the output block nb, as int4_block computes them, for any M:
// each group's weights are unpacked once and serve the rows in tiles of up to six
// (int4_block unpacks them again for every pair of rows), the scaled sums kept in
// acc [M, 64].
template <typename Out>
void int4_block_rows(const BFloat16* x, const float* sums, const uint8_t* w, const BFloat16* sz,
                     const uint32_t* hb, Out* y, int64_t rows, int64_t n_out, int64_t k_in,
                     int64_t nb, float* acc) {
  const int64_t groups = k_in / kGroup;
  const Int4Unpack u;
  const uint8_t* wb = w + nb * 64 * (k_in / 2);
  const uint32_t* hbb = hb == nullptr ? nullptr : hb + nb * (k_in / 2) * 4;
  std::fill(acc, acc + rows * 64, 0.f);
  alignas(64) __m512i buf[4 * kGroup / 2];
  for (int64_t g = 0; g < groups; ++g) {
    if (g + kScalesAhead < groups)
      Int4Unpack::prefetch_scales(sz + ((g + kScalesAhead) * n_out + nb * 64) * 2);
    const uint8_t* wg = wb + g * kGroup * 32;
    for (int p = 0; p < kGroup / 2; ++p)
      u.pair(wg + p * 64, buf + 4 * p, hbb == nullptr ? nullptr : hbb + (g * kGroup / 2 + p) * 4);
    __m512 s[4], zc[4];
    u.scales(sz + (g * n_out + nb * 64) * 2, s, zc);
    int64_t m = 0;
    for (; m + 6 <= rows; m += 6)
      int4_tile<6>(x + m * k_in, sums + m * groups, k_in, groups, g, buf, s, zc, acc + m * 64);
    const BFloat16* xm = x + m * k_in;
    const float* sm = sums + m * groups;
    float* am = acc + m * 64;
    switch (rows - m) {
      case 5: int4_tile<5>(xm, sm, k_in, groups, g, buf, s, zc, am); break;
      case 4: int4_tile<4>(xm, sm, k_in, groups, g, buf, s, zc, am); break;
      case 3: int4_tile<3>(xm, sm, k_in, groups, g, buf, s, zc, am); break;
      case 2: int4_tile<2>(xm, sm, k_in, groups, g, buf, s, zc, am); break;
      case 1: int4_tile<1>(xm, sm, k_in, groups, g, buf, s, zc, am); break;
      default: break;
    }
  }
  for (int64_t m = 0; m < rows; ++m)
    for (int q = 0; q < 4; ++q)
      store16(y + m * n_out + nb * 64 + 16 * q, _mm512_loadu_ps(acc + m * 64 + 16 * q));
}
#endif

// The [rows, n_out] result of a matmul kernel, fp32 with ``f32`` and bf16 otherwise,
// written by ``fill(Out* y)`` for the element type it has.
template <typename Fill>
Tensor kernel_out(const Tensor& x, int64_t rows, int64_t n_out, bool f32, const Fill& fill) {
  Tensor y = at::empty({rows, n_out}, x.options().dtype(f32 ? at::kFloat : at::kBFloat16));
  if (f32)
    fill(y.data_ptr<float>());
  else
    fill(y.data_ptr<BFloat16>());
  return y;
}

bool present(const Tensor& x) { return x.defined() && x.numel() > 0; }

bool int4_fits(const Tensor& x, const Tensor& w, const Tensor& sz) {
#ifdef OMAX_INT4_KERNEL
  return x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() == 2 &&
         w.scalar_type() == at::kByte && w.is_contiguous() && w.size(0) % 64 == 0 &&
         x.size(1) % kGroup == 0 && w.size(1) * 2 == x.size(1) &&
         sz.scalar_type() == at::kBFloat16 && sz.is_contiguous();
#else
  return false;
#endif
}

// x [M, K] bf16 @ the int4-packed w -> [M, N] bf16, as _weight_int4pack_mm_for_cpu
// (fp32 with ``f32``: the kernel's own sums, unrounded; bf16 where it falls back to
// torch's). One or two rows read each weight straight into registers; more share
// each group's unpacking (int4_block_rows). With ``hb`` (int32 [N / 64, K / 2, 4], the
// fifth bits of 5-bit codes; see Int4Unpack) the codes are 5-bit: only this file's
// kernel reads them (omax.engine.linear.Lin takes "int5" only where it is built).
Tensor int4_mm(const Tensor& x, const Tensor& w, const Tensor& sz, bool f32 = false,
               const std::optional<Tensor>& plane = std::nullopt) {
  const Tensor hb = plane.has_value() ? *plane : Tensor();
  const bool five = present(hb);
  if (five)
    TORCH_CHECK(int4_fits(x, w, sz) && hb.scalar_type() == at::kInt && hb.is_contiguous() &&
                    hb.numel() == w.size(0) * x.size(1) / 32,
                "5-bit codes need this CPU's own int4 kernel, bf16 rows and a [N/64, K/2, 4] "
                "int32 plane");
  if (!int4_fits(x, w, sz)) return at::_weight_int4pack_mm_for_cpu(x, w, kGroup, sz);
#ifdef OMAX_INT4_KERNEL
  const uint32_t* ph = five ? reinterpret_cast<const uint32_t*>(hb.data_ptr<int32_t>()) : nullptr;
  const int64_t rows = x.size(0), k_in = x.size(1), n_out = w.size(0), groups = k_in / kGroup;
  const BFloat16* px = x.data_ptr<BFloat16>();
  std::vector<float> sums(rows * groups);  // X: each row's sum over each group
  for (int64_t i = 0; i < rows * groups; ++i) {
    const __m256i* g = reinterpret_cast<const __m256i*>(px + i * kGroup);
    sums[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(g)),
                                                 _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(g + 1))));
  }
  const uint8_t* pw = w.data_ptr<uint8_t>();
  const BFloat16* ps = sz.data_ptr<BFloat16>();
  auto run = [&](auto* py) {
    parallel_for(0, n_out / 64, 1, [&](int64_t b0, int64_t b1) {
      if (rows > 2) {
        std::vector<float> acc(rows * 64);
        for (int64_t nb = b0; nb < b1; ++nb)
          int4_block_rows(px, sums.data(), pw, ps, ph, py, rows, n_out, k_in, nb, acc.data());
        return;
      }
      for (int64_t nb = b0; nb < b1; ++nb) {
        if (rows == 2)
          int4_block<2>(px, sums.data(), pw, ps, ph, py, n_out, k_in, nb);
        else
          int4_block<1>(px, sums.data(), pw, ps, ph, py, n_out, k_in, nb);
      }
    });
  };
  return kernel_out(x, rows, n_out, f32, run);
#endif
}

// An int8 weight is laid out [N, K] (rows), or where this file's kernels read it
// (omax.engine.linear.tile_int8) in tiles of kTile rows, [N / kTile][K / 16][kTile][16]:
// the kTile rows' 16 bytes at each k one after another, so a tile streams as one run
// of memory (rows 640 bytes apart streamed at about half the speed: a 262k-row head,
// 2 threads, 14 against 27 GB/s).
constexpr int64_t kTile = 8;

// Weight row n's 16 bytes at k (a multiple of 16) in either layout.
inline const int8_t* int8_at(const int8_t* w, bool tiled, int64_t k_in, int64_t n, int64_t k) {
  if (!tiled) return w + n * k_in + k;
  return w + ((n / kTile) * (k_in / 16) + k / 16) * (kTile * 16) + (n % kTile) * 16;
}

#if defined(__AVX512F__)
// Rows of y [M, N] (M = MT) for weight rows n..n+4: int8 w [N, K] per-row scale s.
template <int MT, typename Out>
void int8_rows(const float* x, const int8_t* w, const BFloat16* s, Out* y, int64_t n_out,
               int64_t k_in, int64_t n) {
  __m512 a[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 4; ++r) a[m][r] = _mm512_setzero_ps();
  const int8_t* w0 = w + n * k_in;
  for (int64_t k = 0; k < k_in; k += 16) {
    if (k % 64 == 0)
      for (int r = 0; r < 4; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(w0 + r * k_in + k + kAhead / 2), _MM_HINT_T0);
    __m512 wf[4];
    for (int r = 0; r < 4; ++r)
      wf[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + r * k_in + k))));
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * k_in + k);
      for (int r = 0; r < 4; ++r) a[m][r] = _mm512_fmadd_ps(wf[r], xv, a[m][r]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 4; ++r)
      y[m * n_out + n + r] =
          static_cast<Out>(_mm512_reduce_add_ps(a[m][r]) * static_cast<float>(s[n + r]));
}

// Rows of y [M, N] (M = MT) for RR rows of the tile at tile_w (tiled layout), from
// its row ``first``: each row's sums in the same order as int8_rows, for any MT.
template <int MT, int RR, typename Out>
void int8_tile(const float* x, const int8_t* tile_w, const BFloat16* s, Out* y, int64_t n_out,
               int64_t k_in, int64_t n0, int first) {
  __m512 a[MT][RR];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RR; ++r) a[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_in; k += 16) {
    const int8_t* p = tile_w + k * kTile + first * 16;
    for (int c = 0; c < RR * 16; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p + kAhead + c), _MM_HINT_T0);
    for (int r = 0; r < RR; ++r) {
      const __m512 wf = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * r))));
      for (int m = 0; m < MT; ++m)
        a[m][r] = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x + m * k_in + k), a[m][r]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RR; ++r) {
      const int64_t n = n0 + first + r;
      y[m * n_out + n] = static_cast<Out>(_mm512_reduce_add_ps(a[m][r]) * static_cast<float>(s[n]));
    }
}

// All rows of y for the tile at n0: up to two rows in one pass over its kTile rows,
// more in two passes of half the tile (the second from cache), to keep the sums in
// registers.
template <typename Out>
void int8_tile_rows(const float* x, const int8_t* w, const BFloat16* s, Out* y, int64_t rows,
                    int64_t n_out, int64_t k_in, int64_t n0) {
  const int8_t* t = w + n0 * k_in;
  switch (rows) {
    case 1: int8_tile<1, kTile>(x, t, s, y, n_out, k_in, n0, 0); break;
    case 2: int8_tile<2, kTile>(x, t, s, y, n_out, k_in, n0, 0); break;
    case 3:
      for (int h = 0; h < kTile; h += kTile / 2) int8_tile<3, kTile / 2>(x, t, s, y, n_out, k_in, n0, h);
      break;
    default:
      for (int h = 0; h < kTile; h += kTile / 2) int8_tile<4, kTile / 2>(x, t, s, y, n_out, k_in, n0, h);
      break;
  }
}
#endif

// x [M, K] bf16 @ int8 w [N, K].T * s -> [M, N] bf16, as _weight_int8pack_mm (fp32
// with ``f32``: the kernel's own sums, unrounded; bf16 where it falls back to torch's).
// A tiled w (4-D, see kTile) only this kernel reads, up to 4 rows.
Tensor int8_mm(const Tensor& x, const Tensor& w, const Tensor& s, bool f32 = false) {
  const bool tiled = w.dim() == 4;
#if defined(__AVX512F__)
  const int64_t rows = x.size(0), k_in = x.size(1);
  const int64_t n_out = tiled ? w.size(0) * kTile : w.size(0);
  if (x.dim() == 2 && rows <= 4 && k_in % 16 == 0 && n_out % 4 == 0 &&
      (!tiled || w.size(1) * 16 == k_in) && s.scalar_type() == at::kBFloat16 &&
      w.scalar_type() == at::kChar && w.is_contiguous()) {
    Tensor xf = x.to(at::kFloat).contiguous();
    const float* px = xf.data_ptr<float>();
    const int8_t* pw = w.data_ptr<int8_t>();
    const BFloat16* ps = s.data_ptr<BFloat16>();
    if (tiled) {
      auto run = [&](auto* py) {
        parallel_for(0, n_out / kTile, 8, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) int8_tile_rows(px, pw, ps, py, rows, n_out, k_in, b * kTile);
        });
      };
      return kernel_out(x, rows, n_out, f32, run);
    }
    auto run = [&](auto* py) {
      parallel_for(0, n_out / 4, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          switch (rows) {
            case 1: int8_rows<1>(px, pw, ps, py, n_out, k_in, 4 * b); break;
            case 2: int8_rows<2>(px, pw, ps, py, n_out, k_in, 4 * b); break;
            case 3: int8_rows<3>(px, pw, ps, py, n_out, k_in, 4 * b); break;
            default: int8_rows<4>(px, pw, ps, py, n_out, k_in, 4 * b); break;
          }
        }
      });
    };
    return kernel_out(x, rows, n_out, f32, run);
  }
#endif
  TORCH_CHECK(!tiled, "a tiled int8 weight needs this CPU's own int8 kernel, up to 4 bf16 rows");
  return at::_weight_int8pack_mm(x, w, s);
}

// x [M, K] bf16 @ w [N, K].T bf16 -> [M, N] bf16 (fp32 with ``f32``; bf16 where it
// falls back to torch's), for many rows.
// A lane per row: x is laid out as pairs of k [ceil(M/16)][K/2][16], and each weight
// pair is broadcast into vdpbf16ps, so the weights are read in their own layout once
// per 16 rows, and the next block of weight rows is prefetched a line per pair of k.
bool dense_fits(const Tensor& x, const Tensor& w) {
#ifdef OMAX_INT4_KERNEL
  return x.dim() == 2 && w.dim() == 2 && x.scalar_type() == at::kBFloat16 &&
         w.scalar_type() == at::kBFloat16 && x.is_contiguous() && w.is_contiguous() &&
         x.size(1) % 2 == 0 && w.size(1) == x.size(1);
#else
  return false;
#endif
}

#ifdef OMAX_INT4_KERNEL
constexpr int64_t kNT = 16;  // weight rows per block: 16 accumulators

// The many-row kernel of dense_mm and int8_many: y = x @ W.T with each output column
// n scaled by scale(n). block(n0, wr) points wr[0..kNT) at the bf16 rows n0.. of W
// (clamped to the last row) as pairs of k, and returns the bytes to prefetch during
// the block's first tile (nullptr, nullptr: none).
template <typename Block, typename Scale>
Tensor tile_mm(const Tensor& x, int64_t n_out, bool f32, const Block& block, const Scale& scale) {
  const int64_t rows = x.size(0), k_in = x.size(1);
  const int64_t kp_n = k_in / 2, tiles = (rows + 15) / 16;
  std::vector<uint32_t> xt(static_cast<size_t>(tiles * kp_n * 16), 0u);
  const uint32_t* px = reinterpret_cast<const uint32_t*>(x.data_ptr<BFloat16>());
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t kp = 0; kp < kp_n; ++kp) xt[((m / 16) * kp_n + kp) * 16 + m % 16] = px[m * kp_n + kp];
  auto run = [&](auto* py) {
    using Out = std::remove_pointer_t<decltype(py)>;
    parallel_for(0, (n_out + kNT - 1) / kNT, 1, [&](int64_t b0, int64_t b1) {
      alignas(64) float out[kNT][16];
      std::vector<uint32_t> scratch;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kNT, nn = std::min(kNT, n_out - n0);
        const uint32_t* wr[kNT];
        const auto [next, last] = block(n0, wr, scratch);
        float sc[kNT];
        for (int64_t j = 0; j < nn; ++j) sc[j] = scale(n0 + j);
        for (int64_t t = 0; t < tiles; ++t) {
          __m512 acc[kNT];
          for (int64_t j = 0; j < kNT; ++j) acc[j] = _mm512_setzero_ps();
          const uint32_t* xv = xt.data() + t * kp_n * 16;
          for (int64_t kp = 0; kp < kp_n; ++kp) {
            if (t == 0 && next && next + kp * 64 < last) _mm_prefetch(next + kp * 64, _MM_HINT_T0);
            const __m512bh xk = (__m512bh)_mm512_loadu_si512(xv + kp * 16);
            for (int64_t j = 0; j < kNT; ++j)
              acc[j] = _mm512_dpbf16_ps(acc[j], xk, (__m512bh)_mm512_set1_epi32(static_cast<int>(wr[j][kp])));
          }
          for (int64_t j = 0; j < kNT; ++j) _mm512_store_ps(out[j], acc[j]);
          const int64_t mm = std::min<int64_t>(16, rows - 16 * t);
          for (int64_t m = 0; m < mm; ++m) {
            Out* dst = py + (16 * t + m) * n_out + n0;
            for (int64_t j = 0; j < nn; ++j) dst[j] = static_cast<Out>(out[j][m] * sc[j]);
          }
        }
      }
    });
  };
  return kernel_out(x, rows, n_out, f32, run);
}
#endif

Tensor dense_mm(const Tensor& x, const Tensor& w, bool f32 = false) {
#ifdef OMAX_INT4_KERNEL
  if (dense_fits(x, w)) {
    const int64_t n_out = w.size(0), kp_n = x.size(1) / 2;
    const uint32_t* pw = reinterpret_cast<const uint32_t*>(w.data_ptr<BFloat16>());
    const char* last = reinterpret_cast<const char*>(pw + n_out * kp_n);
    auto block = [&](int64_t n0, const uint32_t** wr, std::vector<uint32_t>&) {
      for (int64_t j = 0; j < kNT; ++j) wr[j] = pw + std::min(n0 + j, n_out - 1) * kp_n;
      const char* next = reinterpret_cast<const char*>(pw + std::min(n0 + kNT, n_out - 1) * kp_n);
      return std::pair<const char*, const char*>(next, last);
    };
    return tile_mm(x, n_out, f32, block, [](int64_t) { return 1.f; });
  }
#endif
  return at::linear(x, w);
}

#if defined(OMAX_INT4_KERNEL) && defined(__AVX512VNNI__)
#define OMAX_INT8_VNNI 1
// The longest rows whose int32 sums cannot overflow: a quad adds at most 4 * 255 * 128.
constexpr int64_t kVnniK = 65536;

// Rows of x for int8 dot products (vpdpbusd), in 16-bit fixed point: row m's
// q = round(x * 2^(15 - E)), 2^E the power of two above its largest |x|. A bf16 x within
// 2^8 of the largest is exact, a smaller one off by at most 2^(E - 16): the sums are
// as close to exact as fp32 ones. q splits into hi = (q >> 8) + 128 and lo = q & 255,
// both unsigned bytes, each laid out [ceil(M / 16)][K / 4][16] as 4-byte quads (a lane
// per row, as the kernel reads them).
struct FixedRows {
  int64_t quads;
  std::vector<uint32_t> hi, lo;
  std::vector<double> scale;  // 2^(E - 15), per row
};

FixedRows fixed_rows(const Tensor& x) {
  const int64_t rows = x.size(0), k_in = x.size(1), quads = k_in / 4;
  const size_t words = static_cast<size_t>((rows + 15) / 16 * quads * 16);
  FixedRows f{quads, std::vector<uint32_t>(words, 0u), std::vector<uint32_t>(words, 0u),
              std::vector<double>(static_cast<size_t>((rows + 15) / 16 * 16), 1.)};
  const BFloat16* px = x.data_ptr<BFloat16>();
  uint8_t* hi = reinterpret_cast<uint8_t*>(f.hi.data());
  uint8_t* lo = reinterpret_cast<uint8_t*>(f.lo.data());
  // Parts of whole blocks of 16 rows (a block's rows share their cache lines, which
  // two threads writing at once would pass back and forth), at least 64k values each
  // (a few microseconds of work)
  const int64_t blocks = (rows + 15) / 16;
  parallel_for(0, blocks, std::max<int64_t>(1, 4096 / k_in), [&](int64_t b0, int64_t b1) {
    for (int64_t m = b0 * 16; m < std::min(rows, b1 * 16); ++m) {
      const BFloat16* xm = px + m * k_in;
      float top = 0.f, poison = 0.f;  // poison: NaN where the row holds a NaN or an inf
#pragma omp simd reduction(max : top) reduction(+ : poison)
      for (int64_t k = 0; k < k_in; ++k) {
        const float v = static_cast<float>(xm[k]);
        top = std::max(top, std::fabs(v));
        poison += v * 0.f;
      }
      int e = 0;
      std::frexp(top, &e);  // top < 2^e (bf16: at most (1 - 2^-8) 2^e, so |q| < 2^15)
      const bool finite = std::isfinite(top) && poison == 0.f;  // else the row's y is NaN
      f.scale[m] = finite ? std::ldexp(1., e - 15) : std::numeric_limits<double>::quiet_NaN();
      const float up = finite ? std::ldexp(1.f, 15 - e) : 0.f;
      // 16 k's at a time (k_in % 16 == 0): q rounded to nearest even (as nearbyint),
      // its bytes narrowed, and each of the 4 quads stored to its row's lane
      const __m512 scale = _mm512_set1_ps(up);
      const int64_t base = (m / 16) * quads * 64 + (m % 16) * 4;
      for (int64_t k = 0; k < k_in; k += 16) {
        const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + k))),
            16));
        const __m512i q = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, scale),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        alignas(16) uint32_t h[4], l[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(h),
                        _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_srai_epi32(q, 8),
                                                              _mm512_set1_epi32(128))));
        _mm_store_si128(reinterpret_cast<__m128i*>(l), _mm512_cvtepi32_epi8(q));
        for (int j = 0; j < 4; ++j) {
          const int64_t at = base + (k / 4 + j) * 64;
          std::memcpy(hi + at, h + j, 4);
          std::memcpy(lo + at, l + j, 4);
        }
      }
    }
  });
  return f;
}

// y for every row of f and the kTile weight rows of the tile at tile_w (tiled layout,
// n0 its first row): two int8 dot products a quad (hi and lo, exact int32 sums), less
// 128 times the weight row's sum for hi's offset, scaled in double and rounded once.
// Each row's result depends only on its own x: the same bits for any row count.
template <typename Out>
void int8_vnni_tile(const FixedRows& f, int64_t rows, const int8_t* tile_w, const BFloat16* s,
                    Out* y, int64_t n_out, int64_t n0) {
  const int64_t quads = f.quads;
  int64_t wsum[kTile];
  {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
    for (int64_t c = 0; c < quads / 4; ++c) {  // a chunk: 16 k's of each of the 8 rows
      a = _mm512_dpbusd_epi32(a, ones, _mm512_loadu_si512(tile_w + c * kTile * 16));
      b = _mm512_dpbusd_epi32(b, ones, _mm512_loadu_si512(tile_w + c * kTile * 16 + 64));
    }
    alignas(64) int32_t lanes[32];
    _mm512_store_si512(lanes, a);
    _mm512_store_si512(lanes + 16, b);
    for (int r = 0; r < kTile; ++r)
      wsum[r] = int64_t{lanes[4 * r]} + lanes[4 * r + 1] + lanes[4 * r + 2] + lanes[4 * r + 3];
  }
  const double* xs = f.scale.data();
  const uintptr_t next = reinterpret_cast<uintptr_t>(tile_w + kTile * quads * 4);
  for (int64_t t = 0; t * 16 < rows; ++t) {
    __m512i ah[kTile], al[kTile];
    for (int r = 0; r < kTile; ++r) ah[r] = al[r] = _mm512_setzero_si512();
    const uint32_t* xh = f.hi.data() + t * quads * 16;
    const uint32_t* xl = f.lo.data() + t * quads * 16;
    for (int64_t q = 0; q < quads; ++q) {
      // the next tile streams in while the first 16 rows use this one, a line every two
      // quads (past the weight's end a prefetch is a no-op, never a fault)
      if (t == 0 && q % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(next + q * 32), _MM_HINT_T0);
      const __m512i h = _mm512_loadu_si512(xh + q * 16), l = _mm512_loadu_si512(xl + q * 16);
      const int8_t* p = tile_w + (q / 4) * (kTile * 16) + (q % 4) * 4;
      for (int r = 0; r < kTile; ++r) {
        int32_t quad;
        std::memcpy(&quad, p + r * 16, sizeof(quad));
        const __m512i wq = _mm512_set1_epi32(quad);
        ah[r] = _mm512_dpbusd_epi32(ah[r], h, wq);
        al[r] = _mm512_dpbusd_epi32(al[r], l, wq);
      }
    }
    // (hi - 128 wsum) 256 + lo, exact in double, times the scales, rounded once
    const int64_t mm = std::min<int64_t>(16, rows - 16 * t);
    alignas(64) float out[kTile][16];
    for (int r = 0; r < kTile; ++r) {
      const __m512i h = _mm512_sub_epi32(ah[r], _mm512_set1_epi32(static_cast<int32_t>(128 * wsum[r])));
      const double sw = static_cast<float>(s[n0 + r]);
      for (int half = 0; half < 2; ++half) {
        const __m256i hh = half ? _mm512_extracti64x4_epi64(h, 1) : _mm512_castsi512_si256(h);
        const __m256i ll = half ? _mm512_extracti64x4_epi64(al[r], 1) : _mm512_castsi512_si256(al[r]);
        const __m512d sum = _mm512_fmadd_pd(_mm512_cvtepi32_pd(hh), _mm512_set1_pd(256.),
                                            _mm512_cvtepi32_pd(ll));
        const __m512d sc = _mm512_mul_pd(_mm512_loadu_pd(xs + 16 * t + 8 * half), _mm512_set1_pd(sw));
        _mm256_store_ps(out[r] + 8 * half, _mm512_cvtpd_ps(_mm512_mul_pd(sum, sc)));
      }
    }
    for (int64_t m = 0; m < mm; ++m)
      for (int r = 0; r < kTile; ++r) y[(16 * t + m) * n_out + n0 + r] = static_cast<Out>(out[r][m]);
  }
}
#endif

// x [M, K] bf16 @ int8 w [N, K].T * s, for many rows, without a bf16 copy of w. Tiled
// (where this CPU has VNNI): x in 16-bit fixed point against the int8 codes
// (int8_vnni_tile), about exact. Otherwise each block of kNT weight rows is widened to
// bf16 (exact: |q| <= 127) into a scratch the size of the block, then multiplied as
// dense_mm does, the scales applied to the sums. Elsewhere torch's _weight_int8pack_mm.
Tensor int8_many(const Tensor& x, const Tensor& w, const Tensor& s, bool f32 = false) {
  const bool tiled = w.dim() == 4;
#ifdef OMAX_INT4_KERNEL
  const int64_t n_out = tiled ? w.size(0) * kTile : w.size(0);
  const int64_t k_in = tiled ? w.size(1) * 16 : w.size(1);
  if (x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous() &&
      x.size(1) == k_in && k_in % 16 == 0 && w.scalar_type() == at::kChar &&
      w.is_contiguous() && s.scalar_type() == at::kBFloat16 && s.is_contiguous()) {
#ifdef OMAX_INT8_VNNI
    if (tiled && k_in <= kVnniK) {
      const FixedRows f = fixed_rows(x);
      const int8_t* pw = w.data_ptr<int8_t>();
      const BFloat16* ps = s.data_ptr<BFloat16>();
      const int64_t rows = x.size(0);
      auto run = [&](auto* py) {
        parallel_for(0, n_out / kTile, 8, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            int8_vnni_tile(f, rows, pw + b * kTile * k_in, ps, py, n_out, b * kTile);
        });
      };
      return kernel_out(x, rows, n_out, f32, run);
    }
#endif
    const int8_t* pw = w.data_ptr<int8_t>();
    const BFloat16* ps = s.data_ptr<BFloat16>();
    auto block = [&](int64_t n0, const uint32_t** wr, std::vector<uint32_t>& scratch) {
      scratch.resize(static_cast<size_t>(kNT * k_in / 2));
      for (int64_t j = 0; j < kNT; ++j) {
        const int64_t n = std::min(n0 + j, n_out - 1);
        __m256i* dst = reinterpret_cast<__m256i*>(scratch.data() + j * k_in / 2);
        for (int64_t k = 0; k < k_in; k += 16) {
          const int8_t* src = int8_at(pw, tiled, k_in, n, k);
          const __m512 f = _mm512_cvtepi32_ps(
              _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
          _mm256_storeu_si256(dst + k / 16, (__m256i)_mm512_cvtneps_pbh(f));
        }
        wr[j] = scratch.data() + j * k_in / 2;
      }
      return std::pair<const char*, const char*>(nullptr, nullptr);
    };
    return tile_mm(x, n_out, f32, block, [&](int64_t n) { return static_cast<float>(ps[n]); });
  }
#endif
  TORCH_CHECK(!tiled, "a tiled int8 weight needs this CPU's own kernels");
  return at::_weight_int8pack_mm(x, w, s);
}

// Whether the step's kernels are this file's own (this CPU has their instructions):
// then they all split their work over the Team; otherwise over OpenMP throughout, as
// torch's kernels do (the Team's workers, spinning after a loop, would take a core
// from the OpenMP threads of the next torch kernel).
#ifdef OMAX_INT4_KERNEL
constexpr bool kOwnKernels = true;
#else
constexpr bool kOwnKernels = false;
#endif

// The int8 kernel for up to this many rows; int8_many (widening blocks) beyond.
constexpr int64_t kInt8Rows = 4;

// x @ the linear's weight: t[at..at+3] = packed weight, scales, dense weight. Packed
// linears (kind 4, 8) keep no dense copy (empty): the dense weight is read only by
// kind 0 (unquantised weights). Kind 5 (5-bit codes in the int4 layout) holds its
// fifth-bit plane in the third place instead.
//
// With the own kernels every row's result is the same bits whatever the other rows
// (each kernel computes a row in the same order for any row count), except where an
// int8 linear passes from its kernel to int8_many past kInt8Rows: ``invariant`` keeps
// the int8 kernel there, over groups of kInt8Rows rows.
Tensor lin(const std::vector<Tensor>& t, size_t at, int64_t kind, const Tensor& x,
           bool f32 = false, bool invariant = false) {
  const int64_t rows = x.size(0);
  if (kind == 4) return int4_mm(x, t[at], t[at + 1], f32);
  if (kind == 5) return int4_mm(x, t[at], t[at + 1], f32, t[at + 2]);
  if (kind == 8 && rows <= kInt8Rows) return int8_mm(x, t[at], t[at + 1], f32);
  if (kind == 8 && invariant) {
    std::vector<Tensor> parts;
    for (int64_t r = 0; r < rows; r += kInt8Rows)
      parts.push_back(int8_mm(x.narrow(0, r, std::min(kInt8Rows, rows - r)), t[at], t[at + 1], f32));
    return at::cat(parts);
  }
  if (kind == 8) return int8_many(x, t[at], t[at + 1], f32);
  if (invariant && rows > 1 && !dense_fits(x, t[at + 2])) {  // torch's: a call per row
    std::vector<Tensor> parts;
    for (int64_t r = 0; r < rows; ++r) parts.push_back(dense_mm(x.narrow(0, r, 1), t[at + 2], f32));
    return at::cat(parts);
  }
  return dense_mm(x, t[at + 2], f32);
}

// Rows ids [R] of a linear's weight (t[at..at+3], kind as lin) as Out (float or
// bf16) [R, K], the bits linear.Lin.rows gives: the dense weight's rows, int8 q * s,
// or int4 (q - 8) * s + z (each op in fp32, not fused, then rounded to Out) read in
// place from torch's layout (blocks of 64 rows; in a block each pair of k's takes 64
// bytes, byte b holding k + b / 32 of row b % 32 low and of row 32 + b % 32 high),
// kind 5 adding 16 to q where its plane's bit is set (Int4Unpack).
// The embedding lookup (bf16) and refine_top's rows (fp32) of packed weights.
template <typename Out>
Tensor weight_rows(const std::vector<Tensor>& t, size_t at, int64_t kind, const Tensor& ids) {
  const auto dtype = std::is_same_v<Out, float> ? at::kFloat : at::kBFloat16;
  if (kind != 5 && present(t[at + 2])) return at::index_select(t[at + 2], 0, ids).to(dtype);
  const Tensor& w = t[at];
  const Tensor& s = t[at + 1];
  Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t rows = idx.size(0);
  const int64_t* pi = idx.data_ptr<int64_t>();
  const BFloat16* ps = s.data_ptr<BFloat16>();
  if (kind == 8) {
    const bool tiled = w.dim() == 4;
    const int64_t k = tiled ? w.size(1) * 16 : w.size(1);
    Tensor out = at::empty({rows, k}, s.options().dtype(dtype));
    const int8_t* pw = w.data_ptr<int8_t>();
    Out* po = out.data_ptr<Out>();
    for (int64_t i = 0; i < rows; ++i) {
      const float sc = static_cast<float>(ps[pi[i]]);
      for (int64_t j = 0; j < k; ++j) {  // rows: any k; tiled: k a multiple of 16
        const int8_t* src = int8_at(pw, tiled, k, pi[i], j - j % 16) + j % 16;
        po[i * k + j] = Out(static_cast<float>(*src) * sc);
      }
    }
    return out;
  }
  TORCH_CHECK(kind == 4 || kind == 5, "a linear without weights");
  const int64_t pairs = w.size(1), k = 2 * pairs, n = s.size(1);
  Tensor out = at::empty({rows, k}, s.options().dtype(dtype));
  const uint8_t* pw = w.data_ptr<uint8_t>();
  const uint32_t* ph =
      kind == 5 ? reinterpret_cast<const uint32_t*>(t[at + 2].data_ptr<int32_t>()) : nullptr;
  Out* po = out.data_ptr<Out>();
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t id = pi[i];
    const uint8_t* block = pw + (id / 64) * pairs * 64;
    const uint32_t* plane = ph == nullptr ? nullptr : ph + (id / 64) * pairs * 4 + (id % 64) / 16;
    const int lane = static_cast<int>(id % 32), shift = id % 64 < 32 ? 0 : 4;
    const int bit = static_cast<int>(2 * (id % 16));
    for (int64_t j = 0; j < k; ++j) {
      int q = (block[(j / 2) * 64 + lane + 32 * (j & 1)] >> shift) & 15;
      if (plane != nullptr) q |= ((plane[(j / 2) * 4] >> (bit + (j & 1))) & 1) << 4;
      const BFloat16* sz = ps + ((j / kGroup) * n + id) * 2;
      volatile float p = static_cast<float>(q - 8) * static_cast<float>(sz[0]);  // no FMA
      po[i * k + j] = Out(p + static_cast<float>(sz[1]));
    }
  }
  return out;
}

// bf16 logits are 1/8 apart between 16 and 32, so the top ones often tie and the
// greedy token would hang on rounding: the top kRefine are recomputed in fp32 from the
// weight's rows (as fastpath.refine_top does). Each dot product is a loop of its own,
// not one bmm for the batch: bmm's sums follow the row count, and a pinned row's
// logits must not.
constexpr int64_t kRefine = 8;

Tensor refine_top(Tensor logits, const Tensor& x, const std::vector<Tensor>& t, size_t at,
                  int64_t kind) {
  const int64_t k = std::min(kRefine, logits.size(1));
  Tensor idx = std::get<1>(at::topk(logits, k, 1)).contiguous();  // [R, k]
  Tensor xf = x.to(at::kFloat).contiguous();
  Tensor wf = weight_rows<float>(t, at, kind, idx.view({-1}));  // [R * k, n]
  const int64_t rows = idx.size(0), n = xf.size(1);
  const int64_t* pi = idx.data_ptr<int64_t>();
  const float* px = xf.data_ptr<float>();
  const float* pw = wf.data_ptr<float>();
  Tensor out = logits.contiguous();
  float* po = out.data_ptr<float>();
  const int64_t vocab = out.size(1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const float* w = pw + (r * k + j) * n;
      const float* xr = px + r * n;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t h = 0; h < n; ++h) acc += xr[h] * w[h];
      po[r * vocab + pi[r * k + j]] = acc;
    }
  return out;
}

// The fp32 logits of the normed rows x: the kernels' own fp32 sums, or (torch's
// kernels, which round to bf16) refined.
Tensor logits(const std::vector<Tensor>& t, size_t at, int64_t kind, const Tensor& x,
              bool invariant) {
  Tensor y = lin(t, at, kind, x, true, invariant);
  return y.scalar_type() == at::kFloat ? y : refine_top(y.to(at::kFloat), x, t, at, kind);
}

#if defined(__AVX512F__)
__m512 load_bf16(const BFloat16* p);
__m256i to_bf16(__m512 v);
#endif

// RMSNorm of each row of h [R, H] (bf16) with weight w, in fp32, rounded to bf16.
Tensor rms_norm(const Tensor& h, const Tensor& w, double eps) {
  TORCH_CHECK(h.scalar_type() == at::kBFloat16 && h.is_contiguous() && h.dim() == 2 &&
                  w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.numel() == h.size(1),
              "rms_norm: h must be contiguous bf16 [R, H], w bf16 [H]");
  const int64_t r = h.size(0), n = h.size(1);
  Tensor out = at::empty_like(h);
  const BFloat16* x = h.data_ptr<BFloat16>();
  const BFloat16* g = w.data_ptr<BFloat16>();
  BFloat16* o = out.data_ptr<BFloat16>();
#if defined(__AVX512F__)
  if (n % 16 == 0) {  // 16 lanes at a time (the loops below ran as scalar code)
    parallel_for(0, r, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const BFloat16* xi = x + i * n;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j += 16) {
          const __m512 v = load_bf16(xi + j);
          acc = _mm512_fmadd_ps(v, v, acc);
        }
        const float sum = _mm512_reduce_add_ps(acc);
        const __m512 rstd =
            _mm512_set1_ps(1.f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps)));
        BFloat16* oi = o + i * n;
        for (int64_t j = 0; j < n; j += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(oi + j),
                              to_bf16(_mm512_mul_ps(_mm512_mul_ps(load_bf16(xi + j), rstd),
                                                    load_bf16(g + j))));
      }
    });
    return out;
  }
#endif
  parallel_for(0, r, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
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
  });
  return out;
}

#if defined(__AVX512F__)
// e^x (16 lanes): 2^n * 2^f, 2^f by its Taylor series to degree 7 on [-1/2, 1/2]
// (relative error ~1e-7); x below -87 counts as -87 (~1e-38), above ~88 gives inf.
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

// tanh x = 1 - 2 / (1 + e^2x) (16 lanes): absolute error ~1e-7, exactly +-1 where
// e^2x overflows or vanishes.
__m512 tanh_ps(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e = exp_ps(_mm512_add_ps(x, x));
  return _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(one, e)));
}

// 16 bf16 values as fp32, and fp32 rounded to bf16 (to nearest even, as c10::BFloat16;
// activations are finite).
__m512 load_bf16(const BFloat16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

__m256i to_bf16(__m512 v) {
#if defined(__AVX512BF16__)
  return (__m256i)_mm512_cvtneps_pbh(v);
#else
  const __m512i b = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
#endif
}

__m512 round_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(v)), 16));
}
#endif

// s[0..n) = cap * tanh(s / cap): gemma2's soft-capping of scores or logits, in fp32.
// Every element takes the same instructions wherever it falls in s (a part of a
// parallel loop starts anywhere), so a row's bits do not follow the batch.
void softcap(float* s, int64_t n, float cap) {
#if defined(__AVX512F__)
  const __m512 c = _mm512_set1_ps(cap);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 live = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(live, s + j);
    _mm512_mask_storeu_ps(s + j, live, _mm512_mul_ps(c, tanh_ps(_mm512_div_ps(x, c))));
  }
#else
  for (int64_t j = 0; j < n; ++j) s[j] = cap * std::tanh(s[j] / cap);
#endif
}

// Per-layer parts of the attention input some families add: the fused qkv bias and
// the per-head RMSNorm weights of q and k (undefined or empty where absent).
struct QkvExtras {
  const BFloat16* bias = nullptr;
  const BFloat16* q_norm = nullptr;
  const BFloat16* k_norm = nullptr;
  float eps = 0.f;
};

// Head ``head`` of one row yi of y [R, (nh+2nkv)*hd] (q heads, then k, then v) into dst,
// as the Python step computes it: the bias added (rounded to bf16, as torch's add); q
// and k each RMS-normed over their head (rounded to bf16) and rotated by f (cos, sin
// pairs of the row's position); v as it is. u: hd floats of scratch.
void qkv_head(const BFloat16* yi, int64_t head, const QkvExtras& x, const float* f, int64_t nh,
              int64_t nkv, int64_t hd, float* u, BFloat16* dst) {
  const BFloat16* src = yi + head * hd;
  const BFloat16* b = x.bias ? x.bias + head * hd : nullptr;
  for (int64_t j = 0; j < hd; ++j) {
    u[j] = b ? static_cast<float>(
                   static_cast<BFloat16>(static_cast<float>(src[j]) + static_cast<float>(b[j])))
             : static_cast<float>(src[j]);
  }
  if (head >= nh + nkv) {
    for (int64_t j = 0; j < hd; ++j) dst[j] = static_cast<BFloat16>(u[j]);
    return;
  }
  const BFloat16* g = head < nh ? x.q_norm : x.k_norm;
  if (g) {
    float acc = 0.f;
    for (int64_t j = 0; j < hd; ++j) acc += u[j] * u[j];
    const float rstd = 1.f / std::sqrt(acc / static_cast<float>(hd) + x.eps);
    for (int64_t j = 0; j < hd; ++j)
      u[j] = static_cast<float>(static_cast<BFloat16>(u[j] * rstd * static_cast<float>(g[j])));
  }
  for (int64_t j = 0; j < hd / 2; ++j) {
    const float a = u[2 * j], b2 = u[2 * j + 1];
    const float c = f[2 * j], s = f[2 * j + 1];
    dst[2 * j] = static_cast<BFloat16>(a * c - b2 * s);
    dst[2 * j + 1] = static_cast<BFloat16>(a * s + b2 * c);
  }
}

// Rotary embedding of q and k (interleaved pairs) in y [R, (nh+2nkv)*hd] (qkv_head);
// k and v are written to the caches at (slot[row], :, pos[row]); returns q [R, nh*hd].
Tensor rope_store(const Tensor& y, const QkvExtras& x, const Tensor& freqs,
                  const std::vector<int64_t>& pos, const std::vector<int64_t>& slot,
                  const Tensor& kc, const Tensor& vc, int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t r = y.size(0), width = y.size(1);
  Tensor q = at::empty({r, nh * hd}, y.options());
  const BFloat16* py = y.data_ptr<BFloat16>();
  const float* pf = reinterpret_cast<const float*>(freqs.data_ptr());  // complex64 -> (cos, sin)
  BFloat16* pq = q.data_ptr<BFloat16>();
  BFloat16* pk = kc.data_ptr<BFloat16>();
  BFloat16* pv = vc.data_ptr<BFloat16>();
  const int64_t ks0 = kc.stride(0), ks1 = kc.stride(1), ks2 = kc.stride(2);
  parallel_for(0, r, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> u(static_cast<size_t>(hd));
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t head = 0; head < nh + 2 * nkv; ++head) {
        const int64_t kv = head - nh - nkv;  // v's head, where >= 0
        BFloat16* dst = head < nh    ? pq + i * nh * hd + head * hd
                        : kv < 0     ? pk + slot[i] * ks0 + (head - nh) * ks1 + pos[i] * ks2
                                     : pv + slot[i] * ks0 + kv * ks1 + pos[i] * ks2;
        qkv_head(py + i * width, head, x, pf + pos[i] * hd, nh, nkv, hd, u.data(), dst);
      }
    }
  });
  return q;
}

// q and k of y [R, (nh+2nkv)*hd] as rope_store computes them, [R, nh+nkv, hd], for the
// Python step (which stores k itself); y carries no bias (that step adds it first).
Tensor rope_qk(const Tensor& y, const Tensor& freqs, const std::vector<int64_t>& pos,
               int64_t nh, int64_t nkv, int64_t hd, const std::optional<Tensor>& q_norm,
               const std::optional<Tensor>& k_norm, double eps) {
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.dim() == 2 &&
                  y.size(1) == (nh + 2 * nkv) * hd && static_cast<int64_t>(pos.size()) == y.size(0),
              "rope_qk: y must be contiguous bf16 [R, (nh + 2 nkv) hd] with a position a row");
  const int64_t r = y.size(0), width = y.size(1);
  TORCH_CHECK(freqs.scalar_type() == at::kComplexFloat && freqs.is_contiguous() &&
                  freqs.dim() == 2 && freqs.size(1) == hd / 2,
              "rope_qk: freqs must be a contiguous complex64 table [max_pos, hd / 2]");
  for (int64_t p : pos) TORCH_CHECK(p >= 0 && p < freqs.size(0), "rope_qk: position ", p);
  const QkvExtras x{nullptr, q_norm ? q_norm->data_ptr<BFloat16>() : nullptr,
                    k_norm ? k_norm->data_ptr<BFloat16>() : nullptr, static_cast<float>(eps)};
  Tensor out = at::empty({r, nh + nkv, hd}, y.options());
  const BFloat16* py = y.data_ptr<BFloat16>();
  const float* pf = reinterpret_cast<const float*>(freqs.data_ptr());
  BFloat16* po = out.data_ptr<BFloat16>();
  parallel_for(0, r, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> u(static_cast<size_t>(hd));
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t head = 0; head < nh + nkv; ++head) {
        qkv_head(py + i * width, head, x, pf + pos[i] * hd, nh, nkv, hd, u.data(),
                 po + (i * (nh + nkv) + head) * hd);
      }
    }
  });
  return out;
}

// gelu's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's
// F.gelu(approximate="tanh") computes it in fp32.
constexpr float kGeluBeta = 0.7978845608028654f, kGeluKappa = 0.044715f;

#if defined(__AVX512F__)
// o[0..16) = gelu(a) * b, the gelu rounded to bf16 first.
void gelu_mul16(const BFloat16* a, const BFloat16* b, BFloat16* o) {
  const __m512 x = load_bf16(a);
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 inner = _mm512_mul_ps(_mm512_set1_ps(kGeluBeta),
                                     _mm512_fmadd_ps(_mm512_set1_ps(kGeluKappa), x3, x));
  const __m512 t = _mm512_add_ps(_mm512_set1_ps(1.f), tanh_ps(inner));
  const __m512 g = round_bf16(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), t));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), to_bf16(_mm512_mul_ps(g, load_bf16(b))));
}

// o[0..16) = silu(a) * b, the silu (x / (1 + e^-x), as torch computes it) rounded to
// bf16 first.
void silu_mul16(const BFloat16* a, const BFloat16* b, BFloat16* o) {
  const __m512 x = load_bf16(a);
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
  const __m512 s = round_bf16(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), to_bf16(_mm512_mul_ps(s, load_bf16(b))));
}
#endif

// act(gu[:, :n]) * gu[:, n:], each rounded to bf16 as torch does: act is silu, or
// with ``gelu`` gelu's tanh approximation (gemma).
Tensor act_mul(const Tensor& gu, bool gelu) {
  TORCH_CHECK(gu.scalar_type() == at::kBFloat16 && gu.is_contiguous() && gu.dim() == 2 &&
                  gu.size(1) % 2 == 0,
              "act_mul: gu must be contiguous bf16 [R, 2n]");
  const int64_t r = gu.size(0), n = gu.size(1) / 2;
  Tensor out = at::empty({r, n}, gu.options());
  const BFloat16* p = gu.data_ptr<BFloat16>();
  BFloat16* o = out.data_ptr<BFloat16>();
  parallel_for(0, r * n, 512, [&](int64_t e0, int64_t e1) {
    for (int64_t i = e0 / n; i * n < e1; ++i) {
      const BFloat16* a = p + i * 2 * n;
      const BFloat16* b = a + n;
      BFloat16* oi = o + i * n;
      int64_t j = std::max<int64_t>(0, e0 - i * n);
      const int64_t j1 = std::min(n, e1 - i * n);
#if defined(__AVX512F__)
      auto mul16 = gelu ? gelu_mul16 : silu_mul16;
      for (; j < j1; j += 16) {  // a part's last few through a buffer: as softcap
        const int64_t m = std::min<int64_t>(16, j1 - j);
        if (m == 16) {
          mul16(a + j, b + j, oi + j);
          continue;
        }
        BFloat16 ta[16] = {}, tb[16] = {}, to[16];
        std::copy(a + j, a + j + m, ta);
        std::copy(b + j, b + j + m, tb);
        mul16(ta, tb, to);
        std::copy(to, to + m, oi + j);
      }
#else
      if (!gelu) {
        for (int64_t k = j; k < j1; ++k) {
          const float x = static_cast<float>(a[k]);
          const BFloat16 s = static_cast<BFloat16>(x / (1.f + std::exp(-x)));
          oi[k] = static_cast<BFloat16>(static_cast<float>(s) * static_cast<float>(b[k]));
        }
        continue;
      }
      for (; j < j1; ++j) {
        const float x = static_cast<float>(a[j]);
        const float t = std::tanh(kGeluBeta * (x + kGeluKappa * x * x * x));
        const BFloat16 g = static_cast<BFloat16>(0.5f * x * (1.f + t));
        oi[j] = static_cast<BFloat16>(static_cast<float>(g) * static_cast<float>(b[j]));
      }
#endif
    }
  });
  return out;
}

#ifdef OMAX_ATTEND_KERNEL
// A head's scores s[0..len) (their largest: top) soft-capped where cap > 0 (gemma2),
// then replaced by e^(s - max); returns 1 / their sum.
float softmax_scores(float* s, int64_t len, float top, float cap) {
  if (cap > 0.f) {
    softcap(s, len, cap);
    top = *std::max_element(s, s + len);
  }
  __m512 sum = _mm512_setzero_ps();
  const __m512 mx = _mm512_set1_ps(top);
  for (int64_t t = 0; t < len; t += 16) {
    const __mmask16 live = len - t >= 16 ? 0xffff : static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + t), mx));
    _mm512_mask_storeu_ps(s + t, live, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(live, e));
  }
  return 1.f / _mm512_reduce_add_ps(sum);
}

// One query head of one row against keys 0..len of its KV head: q [hd] bf16, keys and
// values at k + t * step, v + t * step; writes o [hd] bf16. hd % 32 == 0, hd <= 256.
// ``cap``: the scores are soft-capped (gemma2), else 0.
void attend_head(const BFloat16* q, const BFloat16* k, const BFloat16* v, int64_t step,
                 int64_t len, int64_t hd, float scale, float cap, float* s, BFloat16* o) {
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
  const __m512 inv = _mm512_set1_ps(softmax_scores(s, len, top, cap));
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
  for (int64_t c = 0; c < lanes; ++c)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 * c),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[c], inv)));
}

// attend_head for NB query heads that share their keys and values (a GQA group; q and
// o hold them one after another), hd = 16 LANES: each key and value is read once for
// all of them, and the heads' sums run as independent chains where one head's wait on
// its previous sum (an FMA's latency a key) bounded the loop. Each head gets
// attend_head's result bit for bit: the same operations in the same order.
template <int NB, int LANES>
void attend_heads(const BFloat16* q, const BFloat16* k, const BFloat16* v, int64_t step,
                  int64_t len, float scale, float cap, float* s, BFloat16* o) {
  constexpr int kHd = 16 * LANES, kChunks = LANES / 2;
  __m512bh qv[NB][kChunks];
  for (int j = 0; j < NB; ++j)
    for (int c = 0; c < kChunks; ++c)
      qv[j][c] = (__m512bh)_mm512_loadu_si512(q + j * kHd + 32 * c);
  float top[NB];
  for (int j = 0; j < NB; ++j) top[j] = -INFINITY;
  for (int64_t t = 0; t < len; ++t) {
    const BFloat16* kt = k + t * step;
    __m512 acc[NB];
    for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_ps();
    for (int c = 0; c < kChunks; ++c) {
      const __m512bh kv = (__m512bh)_mm512_loadu_si512(kt + 32 * c);
      for (int j = 0; j < NB; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], kv, qv[j][c]);
    }
    for (int j = 0; j < NB; ++j) {
      s[j * len + t] = _mm512_reduce_add_ps(acc[j]) * scale;
      top[j] = std::max(top[j], s[j * len + t]);
    }
  }
  float inv[NB];
  for (int j = 0; j < NB; ++j) inv[j] = softmax_scores(s + j * len, len, top[j], cap);
  __m512 acc[NB][LANES];
  for (int j = 0; j < NB; ++j)
    for (int c = 0; c < LANES; ++c) acc[j][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    const BFloat16* vt = v + t * step;
    for (int c = 0; c < LANES; ++c) {
      const __m512 x = _mm512_cvtpbh_ps(
          (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vt + 16 * c)));
      for (int j = 0; j < NB; ++j)
        acc[j][c] = _mm512_fmadd_ps(_mm512_set1_ps(s[j * len + t]), x, acc[j][c]);
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int c = 0; c < LANES; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j * kHd + 16 * c),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv[j]))));
}

// The attend_heads kernel for g heads a group of head_dim hd, or nullptr (then
// attend_head a head at a time): groups whose accumulators fit the registers.
using HeadsFn = void (*)(const BFloat16*, const BFloat16*, const BFloat16*, int64_t, int64_t,
                         float, float, float*, BFloat16*);
HeadsFn heads_kernel(int64_t g, int64_t hd) {
  if (hd == 64 && g == 2) return attend_heads<2, 4>;
  if (hd == 64 && g == 3) return attend_heads<3, 4>;
  if (hd == 64 && g == 4) return attend_heads<4, 4>;
  if (hd == 128 && g == 2) return attend_heads<2, 8>;
  return nullptr;
}
#endif

// Row i's query heads q [R, nh*hd] against keys 0..pos[i] of cache slot i -> [R, nh*hd],
// or with a sliding ``window`` (> 0) its last ``window`` keys; ``scale`` is the softmax
// scale (0: 1/sqrt(hd)) and ``cap`` soft-caps the scores (gemma2; 0: none).
// ``invariant``: where torch's kernels run, each row over exactly its own keys in a call
// of its own (the padded batch's sums would follow the longest row).
// ``slots`` (this file's own kernel only): row i's cache slot, where not i (a prompt's
// rows share theirs, each against the keys up to its own position: causal).
Tensor attend(const Tensor& q, const Tensor& kc, const Tensor& vc,
              const std::vector<int64_t>& pos, int64_t length, int64_t nh, int64_t nkv,
              int64_t hd, bool invariant = false, int64_t window = 0, double scale = 0.,
              double cap = 0., const std::vector<int64_t>& slots = {}) {
  const int64_t r = q.size(0), g = nh / nkv;
  auto slot = [&](int64_t row) { return slots.empty() ? row : slots[row]; };
  if (scale <= 0.) scale = 1. / std::sqrt(static_cast<double>(hd));
  auto first = [&](int64_t p) { return window > 0 ? std::max<int64_t>(0, p + 1 - window) : 0; };
#ifdef OMAX_ATTEND_KERNEL
  if (hd % 32 == 0 && hd <= 256 && kc.stride(3) == 1 && kc.strides() == vc.strides()) {
    Tensor o = at::empty_like(q);
    const BFloat16* pq = q.data_ptr<BFloat16>();
    const BFloat16* pk = kc.data_ptr<BFloat16>();
    const BFloat16* pv = vc.data_ptr<BFloat16>();
    BFloat16* po = o.data_ptr<BFloat16>();
    const int64_t s0 = kc.stride(0), s1 = kc.stride(1), s2 = kc.stride(2);
    // a group's heads together where there are groups enough to share out (the bits
    // are the same either way)
    const HeadsFn heads = r * nkv >= 8 ? heads_kernel(g, hd) : nullptr;
    if (heads != nullptr) {
      parallel_for(0, r * nkv, 1, [&](int64_t b, int64_t e) {
        std::vector<float> scores(static_cast<size_t>(g * length));
        for (int64_t w = b; w < e; ++w) {
          const int64_t row = w / nkv, f = first(pos[row]);
          const int64_t at = slot(row) * s0 + (w % nkv) * s1 + f * s2;
          heads(pq + w * g * hd, pk + at, pv + at, s2, pos[row] + 1 - f,
                static_cast<float>(scale), static_cast<float>(cap), scores.data(),
                po + w * g * hd);
        }
      });
      return o;
    }
    parallel_for(0, r * nh, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores(static_cast<size_t>(length));
      for (int64_t w = b; w < e; ++w) {
        const int64_t row = w / nh, h = w % nh, f = first(pos[row]);
        const int64_t at = slot(row) * s0 + (h / g) * s1 + f * s2;
        attend_head(pq + w * hd, pk + at, pv + at, s2, pos[row] + 1 - f, hd,
                    static_cast<float>(scale), static_cast<float>(cap), scores.data(),
                    po + w * hd);
      }
    });
    return o;
  }
#endif
  TORCH_CHECK(slots.empty(), "rows in cache slots of their own need this CPU's own kernels");
  if (invariant && (r > 1 || first(pos[0]) > 0)) {  // as the Python step's pinned rows
    std::vector<Tensor> rows;
    for (int64_t i = 0; i < r; ++i) {
      const int64_t f = first(pos[i]), n = pos[i] + 1 - f;
      rows.push_back(attend(q.narrow(0, i, 1), kc.narrow(0, i, 1).narrow(2, f, n),
                            vc.narrow(0, i, 1).narrow(2, f, n), {n - 1}, n, nh, nkv, hd, false, 0,
                            scale, cap));
    }
    return at::cat(rows);
  }
  // torch's, as the Python step calls them: the keys padded to the longest row and
  // masked to each row's own (and its window's).
  c10::optional<Tensor> mask;
  const bool ragged = *std::min_element(pos.begin(), pos.end()) + 1 != length;
  if (ragged || (window > 0 && length > window)) {
    Tensor p = at::tensor(pos, q.options().dtype(at::kLong)).unsqueeze(1);
    Tensor keys = at::arange(length, p.options()).unsqueeze(0);
    Tensor m = at::le(keys, p);
    if (window > 0) m = at::logical_and(m, at::gt(keys, p - window));
    mask = m.view({r, 1, 1, length});
  }
  Tensor qv = q.view({r, nkv, g, hd});
  Tensor k = kc.slice(0, 0, r).slice(2, 0, length), v = vc.slice(0, 0, r).slice(2, 0, length);
  if (cap <= 0.)
    return at::scaled_dot_product_attention(qv, k, v, mask, 0., false, scale).view({r, -1});
  Tensor s = at::matmul(qv, k.transpose(-1, -2)) * scale;  // fastpath.FastDecoder.attention
  s = at::tanh(s / cap) * cap;
  if (mask) s = s.masked_fill(mask->logical_not(), -INFINITY);
  return at::matmul(at::softmax(s, -1, at::kFloat).to(q.scalar_type()), v).view({r, -1});
}

// Where a layer's tensors are in Model::t: kPerLayer of them per layer, then the
// embedding (kLin), the final norm and the head (kLin). The optional ones are empty tensors
// where the family lacks them (see omax.engine.arch).
constexpr size_t kLn1 = 0, kQkv = 1, kO = kQkv + kLin, kLn2 = kO + kLin, kGu = kLn2 + 1,
                 kDown = kGu + kLin, kBias = kDown + kLin, kQNorm = kBias + 1, kKNorm = kQNorm + 1,
                 kPostAttn = kKNorm + 1, kPostFfn = kPostAttn + 1, kPerLayer = kPostFfn + 1;


const BFloat16* optional_ptr(const Tensor& x) {
  return present(x) ? x.data_ptr<BFloat16>() : nullptr;
}

}  // namespace

// A model's weights, kinds, KV caches and family (omax.engine.arch.Arch), converted from
// Python once rather than as ~400 tensor arguments on every step, each converted with
// the GIL held.
struct Model {
  std::vector<Tensor> t;
  std::vector<int64_t> kinds;  // per layer: qkv, o, gu, down; then the embedding, the head
  std::vector<Tensor> kc, vc;
  std::vector<Tensor> tables;  // rotary tables, complex64 [max_pos, hd / 2]
  std::vector<int64_t> rope;   // per layer: its table
  std::vector<int64_t> window; // per layer: its sliding window, 0 for none
  int64_t nh = 0, nkv = 0, hd = 0;
  double eps = 0., embed_scale = 1., attn_scale = 0., attn_softcap = 0., final_softcap = 0.;
  bool gelu = false;
  int64_t vocab = 0;  // the embedding's rows (make_model): step checks its ids against it

  Tensor decode(const Tensor& ids, const std::vector<int64_t>& positions, int64_t length,
                bool invariant) const;
  Tensor step(const Tensor& ids, const std::vector<int64_t>& positions,
              const std::vector<int64_t>& slots, const std::vector<int64_t>& outputs) const;
  // Whether step takes rows in slots of their own: this CPU's own kernels, attention's
  // included (its head_dim).
  bool prompts() const { return kOwnKernels && hd % 32 == 0 && hd <= 256; }

 private:
  Tensor forward(const Tensor& ids, const std::vector<int64_t>& positions,
                 const std::vector<int64_t>& slots, int64_t length, bool invariant,
                 const std::vector<int64_t>& outputs) const;
};

// h += o (bf16 [R, H] each, contiguous) on this step's threads, rounded as torch's add_
// (which, past its grain, would start an OpenMP loop between the Team's).
void add_rows(Tensor& h, const Tensor& o) {
  TORCH_CHECK(o.is_contiguous() && o.numel() == h.numel(), "add_rows: shapes differ");
  BFloat16* ph = h.data_ptr<BFloat16>();
  const BFloat16* po = o.data_ptr<BFloat16>();
  parallel_for(0, h.numel(), 16384, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      ph[e] = static_cast<BFloat16>(static_cast<float>(ph[e]) + static_cast<float>(po[e]));
  });
}

// Logits [R, V] fp32 of one token for each of cache slots 0..R-1, as
// fastpath.FastDecoder.forward and .logits compute them. ``invariant``: every row
// computes the same bits as it would alone or in any other batch (a seeded request's
// rows; see lin and attend), at some cost where torch's kernels run.
Tensor Model::decode(const Tensor& ids, const std::vector<int64_t>& positions, int64_t length,
                     bool invariant) const {
  return forward(ids, positions, {}, length, invariant, {});
}

// Logits [len(outputs), V] fp32 of the rows ``outputs`` of a step whose row i is the token
// ids[i] at positions[i] of cache slot slots[i]: decode rows and prompt rows together, a
// prompt's rows in one slot each attending to the keys up to its own position (its
// earlier rows' written first). Needs this CPU's own kernels; every row's result is the
// same bits as in any other step where no int8 linear passes kInt8Rows rows (lin).
Tensor Model::step(const Tensor& ids, const std::vector<int64_t>& positions,
                   const std::vector<int64_t>& slots, const std::vector<int64_t>& outputs) const {
  TORCH_CHECK(prompts(), "a step of prompt rows needs this CPU's own kernels (and a head_dim "
                         "of a multiple of 32, up to 256)");
  const int64_t rows = ids.size(0);
  TORCH_CHECK(static_cast<int64_t>(positions.size()) == rows &&
                  static_cast<int64_t>(slots.size()) == rows,
              "step: a position and a slot a row");
  int64_t length = 0;
  for (int64_t i = 0; i < rows; ++i) {
    TORCH_CHECK(slots[i] >= 0 && slots[i] < kc[0].size(0) && positions[i] >= 0 &&
                    positions[i] < kc[0].size(2),
                "step: row ", i, " is past the cache");
    length = std::max(length, positions[i] + 1);
  }
  for (int64_t r : outputs) TORCH_CHECK(r >= 0 && r < rows, "step: no row ", r);
  // a prompt's ids were checked by the engine; a wrong one here would read past the table
  Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t* pi = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK(pi[i] >= 0 && pi[i] < vocab, "step: a token id outside the vocabulary of ", vocab);
  return forward(idx, positions, slots, length, false, outputs);
}

Tensor Model::forward(const Tensor& ids, const std::vector<int64_t>& positions,
                      const std::vector<int64_t>& slots, int64_t length, bool invariant,
                      const std::vector<int64_t>& outputs) const {
  at::InferenceMode guard;
  const int64_t n_layers = static_cast<int64_t>(kc.size());
  const size_t tail = static_cast<size_t>(n_layers) * kPerLayer;
  struct Restore {  // the kernels called on their own use OpenMP (see use_team)
    ~Restore() { use_team = false; }
  } restore;
  use_team = kOwnKernels;
  std::vector<int64_t> slot = slots;  // rope_store's: row i's slot, i where none are given
  if (slot.empty())
    for (int64_t i = 0; i < ids.size(0); ++i) slot.push_back(i);
  Tensor h = weight_rows<BFloat16>(t, tail, kinds[4 * n_layers], ids);
  if (embed_scale != 1.) h.mul_(embed_scale);  // a bf16 value: torch's bf16 product
  for (int64_t i = 0; i < n_layers; ++i) {
    const size_t b = static_cast<size_t>(i) * kPerLayer;
    const Tensor* l = t.data() + b;
    const int64_t* kd = kinds.data() + 4 * i;
    Tensor y = lin(t, b + kQkv, kd[0], rms_norm(h, l[kLn1], eps), false, invariant);
    const QkvExtras ex{optional_ptr(l[kBias]), optional_ptr(l[kQNorm]), optional_ptr(l[kKNorm]),
                       static_cast<float>(eps)};
    Tensor q = rope_store(y, ex, tables[rope[i]], positions, slot, kc[i], vc[i], nh, nkv, hd);
    Tensor a = attend(q, kc[i], vc[i], positions, length, nh, nkv, hd, invariant, window[i],
                      attn_scale, attn_softcap, slots);
    Tensor o = lin(t, b + kO, kd[1], a, false, invariant);
    add_rows(h, present(l[kPostAttn]) ? rms_norm(o, l[kPostAttn], eps) : o);
    Tensor gu = lin(t, b + kGu, kd[2], rms_norm(h, l[kLn2], eps), false, invariant);
    Tensor d = lin(t, b + kDown, kd[3], act_mul(gu, gelu), false, invariant);
    add_rows(h, present(l[kPostFfn]) ? rms_norm(d, l[kPostFfn], eps) : d);
  }
  if (!outputs.empty()) h = h.index_select(0, at::tensor(outputs, ids.options().dtype(at::kLong)));
  Tensor out = logits(t, tail + kLin + 1, kinds[4 * n_layers + 1],
                      rms_norm(h, t[tail + kLin], eps), invariant);
  if (final_softcap > 0.) {
    float* p = out.data_ptr<float>();
    const float cap = static_cast<float>(final_softcap);
    parallel_for(0, out.numel(), 4096,
                 [&](int64_t e0, int64_t e1) { softcap(p + e0, e1 - e0, cap); });
  }
  return out;
}

// Model's constructor from Python (omax.engine.native.NativeDecoder), its layout checked:
// a tensor out of place would be read as another's data.
Model make_model(std::vector<Tensor> tensors, std::vector<int64_t> kinds, std::vector<Tensor> k,
                 std::vector<Tensor> v, std::vector<Tensor> tables, std::vector<int64_t> rope,
                 std::vector<int64_t> windows, int64_t n_heads, int64_t n_kv, int64_t head_dim,
                 double eps, double embed_scale, double attn_scale, double attn_softcap,
                 double final_softcap, bool gelu) {
  const size_t n = k.size();
  TORCH_CHECK(v.size() == n && rope.size() == n && windows.size() == n,
              "one cache, table and window per layer");
  TORCH_CHECK(tensors.size() == n * kPerLayer + 2 * kLin + 1, "expected ",
              n * kPerLayer + 2 * kLin + 1, " tensors for ", n, " layers, got ", tensors.size());
  TORCH_CHECK(kinds.size() == 4 * n + 2, "expected ", 4 * n + 2, " kinds");
  TORCH_CHECK(n_heads % n_kv == 0 && head_dim % 2 == 0, "bad attention shape");
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(rope[i] >= 0 && rope[i] < static_cast<int64_t>(tables.size()), "layer ", i,
                ": no rotary table ", rope[i]);
    const Tensor& table = tables[rope[i]];
    TORCH_CHECK(table.scalar_type() == at::kComplexFloat && table.is_contiguous() &&
                    table.size(1) == head_dim / 2 && table.size(0) >= k[i].size(2),
                "layer ", i, ": the rotary table must be complex64 [>= max_len, head_dim / 2]");
    const Tensor* l = tensors.data() + i * kPerLayer;
    for (size_t s : {kBias, kQNorm, kKNorm, kPostAttn, kPostFfn})
      TORCH_CHECK(!present(l[s]) || (l[s].scalar_type() == at::kBFloat16 && l[s].is_contiguous()),
                  "layer ", i, ": optional tensor ", s, " must be contiguous bf16");
    TORCH_CHECK(!present(l[kBias]) || l[kBias].numel() == (n_heads + 2 * n_kv) * head_dim,
                "layer ", i, ": the qkv bias has the wrong size");
    TORCH_CHECK(!present(l[kQNorm]) || (l[kQNorm].numel() == head_dim && present(l[kKNorm]) &&
                                        l[kKNorm].numel() == head_dim),
                "layer ", i, ": q and k norms of head_dim each");
  }
  Model m;
  m.t = std::move(tensors);
  m.kinds = std::move(kinds);
  m.kc = std::move(k);
  m.vc = std::move(v);
  m.tables = std::move(tables);
  m.rope = std::move(rope);
  m.window = std::move(windows);
  m.nh = n_heads;
  m.nkv = n_kv;
  m.hd = head_dim;
  m.eps = eps;
  m.embed_scale = embed_scale;
  m.attn_scale = attn_scale;
  m.attn_softcap = attn_softcap;
  m.final_softcap = final_softcap;
  m.gelu = gelu;
  // the embedding's rows: int8 scales one a row, the int4 layout's [K/32, N, 2], or dense
  const size_t e = n * kPerLayer;
  const int64_t kind = m.kinds[4 * n];
  m.vocab = kind == 8 ? m.t[e + 1].numel() : kind == 4 || kind == 5 ? m.t[e + 1].size(1)
                                                                    : m.t[e + 2].size(0);
  return m;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The step runs without the GIL, like torch's own ops: the worker's event loop and
  // other threads keep running Python while it computes.
  pybind11::class_<Model>(m, "Model", "a FastDecoder's weights and KV caches, for decode")
      .def(pybind11::init(&make_model), pybind11::arg("tensors"), pybind11::arg("kinds"),
           pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("tables"), pybind11::arg("rope"),
           pybind11::arg("windows"), pybind11::arg("n_heads"), pybind11::arg("n_kv"),
           pybind11::arg("head_dim"), pybind11::arg("eps"), pybind11::arg("embed_scale") = 1.0,
           pybind11::arg("attn_scale") = 0.0, pybind11::arg("attn_softcap") = 0.0,
           pybind11::arg("final_softcap") = 0.0, pybind11::arg("gelu") = false)
      .def("decode", &Model::decode, "one batched decode step", pybind11::arg("ids"),
           pybind11::arg("positions"), pybind11::arg("length"), pybind11::arg("invariant") = false,
           pybind11::call_guard<pybind11::gil_scoped_release>())
      .def_property_readonly("prompts", &Model::prompts)
      .def("step", &Model::step, "one step of decode and prompt rows in their cache slots",
           pybind11::arg("ids"), pybind11::arg("positions"), pybind11::arg("slots"),
           pybind11::arg("outputs"), pybind11::call_guard<pybind11::gil_scoped_release>());

  m.def("int4_mm", &int4_mm,
        "x @ torch's CPU int4-packed weight (as _weight_int4pack_mm_for_cpu); with hb, 5-bit codes",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("sz"), pybind11::arg("f32") = false,
        pybind11::arg("hb") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  // whether this build has its own kernels (AVX512-BF16 and -VBMI): 5-bit codes need them
  m.attr("own_kernels") = kOwnKernels;
  m.def("int8_mm", &int8_mm, "x @ an int8 weight with row scales (as _weight_int8pack_mm)",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("s"), pybind11::arg("f32") = false,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("int8_many", &int8_many, "x @ an int8 weight with row scales, for many rows",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("s"), pybind11::arg("f32") = false,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("dense_mm", &dense_mm, "x @ a bf16 weight's transpose, a lane per row (as F.linear)",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("f32") = false,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  // The Python step's row-wise parts (prompts), as the decode step computes them.
  m.def("rms_norm", &rms_norm, "RMSNorm of each bf16 row, in fp32 (as F.rms_norm)",
        pybind11::arg("h"), pybind11::arg("w"), pybind11::arg("eps"),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("act_mul", &act_mul, "act(gu[:, :n]) * gu[:, n:], act silu or (gelu) gelu-tanh",
        pybind11::arg("gu"), pybind11::arg("gelu") = false,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("rope_qk", &rope_qk, "q and k of a fused qkv output, QK-normed and rotated",
        pybind11::arg("y"), pybind11::arg("freqs"), pybind11::arg("positions"),
        pybind11::arg("n_heads"), pybind11::arg("n_kv"), pybind11::arg("head_dim"),
        pybind11::arg("q_norm") = pybind11::none(), pybind11::arg("k_norm") = pybind11::none(),
        pybind11::arg("eps") = 0.0, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("attend", &attend, "rows' query heads against their own cached keys (decode attention)",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("positions"),
        pybind11::arg("length"), pybind11::arg("n_heads"), pybind11::arg("n_kv"),
        pybind11::arg("head_dim"), pybind11::arg("invariant") = false,
        pybind11::arg("window") = 0, pybind11::arg("scale") = 0.0, pybind11::arg("cap") = 0.0,
        pybind11::arg("slots") = std::vector<int64_t>(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
