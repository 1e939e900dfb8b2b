// rnnkit: the per-step loops of the fused LSTM, GRU and SimpleRNN recurrences in C++ (CPU,
// float32/64).
//
// The loops of rnnkit/kernels/fused.py's _LSTMFunction, _GRUFunction and _SimpleFunction (same
// buffers, same layout, same numbers up to float rounding), without Python's per-op overhead and
// with the element-wise gate math of a step in one pass per batch row; the LSTM's backward loop
// also sums the weight gradients over all steps (brgemm_weight_grads, add_weight_grads).
// The LSTM loop with brgemm also computes its input projection, a chunk of steps at a time
// (float32, or a bfloat16 call's bfloat16 input rows); everything else (the other cells'
// projection, autograd) stays in Python. Built on first use by rnnkit/kernels/cpu_ext.py.
// Also here: the weight-gradient product [a_1 | a_2]^T b of the other cells (weight_grads, for
// products.py's tn), the counter-based Bernoulli masks of rnnkit/kernels/masks.py (zoneout) and a
// fast 2-D transpose (the vendor backend's weights, products.py's linear weight gradient).
//
// Layout (all contiguous): LSTM G (T, B, 4u) gate columns in Keras' order i, f, c, o (the Python
// loops permute them to o, i, f, c; these loops need no permutation): pre-activations in,
// activations out of the forward, gate gradients out of the backward; H, C (T+1, B, u); TC, CN
// (n, B, u) with n = T when saving for the backward, else 1. The backward passes take dY
// (T, B, u), the gradient of the outputs H[1:], and dh = the gradient reaching H[T] (last output
// + final state).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Activations: the ids are fixed by rnnkit/kernels/cpu_ext.py (ACTIVATION_IDS). SiLU and GELU
// are the two whose derivative needs the input (they are not monotonic or not invertible in
// closed form): the loops then keep the pre-activations in a buffer P; every other derivative
// comes from the output.
enum Act : int64_t {
  kLinear = 0,
  kSigmoid = 1,
  kTanh = 2,
  kHardSigmoid = 3,
  kRelu = 4,
  kElu = 5,
  kSelu = 6,
  kSoftsign = 7,
  kSoftplus = 8,
  kExponential = 9,
  kSilu = 10,
  kGelu = 11,
};

constexpr bool needs_input(int64_t kind) { return kind == kSilu || kind == kGelu; }

// The scalar functions below must be inlined into the loops for them to vectorise; with a dozen
// call sites GCC's inlining budget no longer does that by itself (measured: the LSTM training step
// 59 -> 75 ms when the activations were added), hence the attribute.
#define RNNKIT_INLINE inline __attribute__((always_inline))

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

// exp(x) for float in plain arithmetic (Cephes' polynomial, ~1 ulp), so that the loops
// vectorise (with -fno-trapping-math, which lets the compiler turn the clamps and the floor into
// vector selects); inputs are clamped to the range where the result is a normal float.
RNNKIT_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float fn = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const int32_t n = static_cast<int32_t>(fn);
  x = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const int32_t bits = (n + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
RNNKIT_INLINE double exp_approx(double x) { return std::exp(x); }

// log(1 + t) for 0 <= t <= 1 in plain arithmetic: 2 atanh(s) with s = t / (2 + t) <= 1/3, the
// odd series to s^15 (truncation below 1e-8 relative); no cancellation for small t.
RNNKIT_INLINE float log1p_unit(float t) {
  const float s = t / (2.0f + t), z = s * s;
  float p = 1.0f / 15.0f;
  p = p * z + 1.0f / 13.0f;
  p = p * z + 1.0f / 11.0f;
  p = p * z + 1.0f / 9.0f;
  p = p * z + 1.0f / 7.0f;
  p = p * z + 1.0f / 5.0f;
  p = p * z + 1.0f / 3.0f;
  p = p * z + 1.0f;
  return 2.0f * s * p;
}
RNNKIT_INLINE double log1p_unit(double t) { return std::log1p(t); }

// erf(x) for float in plain arithmetic: Abramowitz & Stegun 7.1.26 (absolute error below
// 1.5e-7, about 2 float ulps of 1), odd in x.
RNNKIT_INLINE float erf_approx(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_approx(-ax * ax);
  return x < 0.0f ? -y : y;
}
RNNKIT_INLINE double erf_approx(double x) { return std::erf(x); }

template <typename T>
RNNKIT_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}

template <typename T>
RNNKIT_INLINE T gelu_cdf(T x) {  // Phi(x), the standard normal distribution function
  return T(0.5) * (T(1) + erf_approx(x * T(0.70710678118654752440)));
}

template <typename T>
void act_inplace(int64_t kind, T* x, int64_t n) {
  switch (kind) {
    case kSigmoid:
      for (int64_t j = 0; j < n; ++j) x[j] = sigmoid(x[j]);
      break;
    case kTanh:  // 2 sigmoid(2x) - 1, as the Python loops compute it
      for (int64_t j = 0; j < n; ++j) x[j] = T(2) * sigmoid(x[j] + x[j]) - T(1);
      break;
    case kHardSigmoid:
      for (int64_t j = 0; j < n; ++j) x[j] = std::min(std::max((x[j] + T(3)) / T(6), T(0)), T(1));
      break;
    case kRelu:
      for (int64_t j = 0; j < n; ++j) x[j] = std::max(x[j], T(0));
      break;
    case kElu:
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] > T(0) ? x[j] : exp_approx(x[j]) - T(1);
      break;
    case kSelu:
      for (int64_t j = 0; j < n; ++j) {
        const T v = x[j] > T(0) ? x[j] : T(kSeluAlpha) * (exp_approx(x[j]) - T(1));
        x[j] = T(kSeluScale) * v;
      }
      break;
    case kSoftsign:
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] / (T(1) + std::abs(x[j]));
      break;
    case kSoftplus:  // max(x, 0) + log(1 + exp(-|x|)); x above 20: x (torch's threshold)
      for (int64_t j = 0; j < n; ++j) {
        const T v = std::max(x[j], T(0)) + log1p_unit(exp_approx(-std::abs(x[j])));
        x[j] = x[j] > T(20) ? x[j] : v;
      }
      break;
    case kExponential:
      for (int64_t j = 0; j < n; ++j) x[j] = exp_approx(x[j]);
      break;
    case kSilu:
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] * sigmoid(x[j]);
      break;
    case kGelu:
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] * gelu_cdf(x[j]);
      break;
    default:
      break;
  }
}

template <typename T>
void act_out(int64_t kind, const T* x, T* y, int64_t n) {
  if (y != x) std::copy(x, x + n, y);
  act_inplace(kind, y, n);
}

// g[j] *= f'(x[j]) for j < n, from the output y (and the input x where the activation needs it,
// needs_input(kind); x may be null otherwise).
template <typename T>
void mul_deriv(int64_t kind, const T* y, const T* x, T* g, int64_t n) {
  switch (kind) {
    case kSigmoid:
      for (int64_t j = 0; j < n; ++j) g[j] *= y[j] * (T(1) - y[j]);
      break;
    case kTanh:
      for (int64_t j = 0; j < n; ++j) g[j] *= T(1) - y[j] * y[j];
      break;
    case kHardSigmoid:
      for (int64_t j = 0; j < n; ++j) g[j] *= (y[j] > T(0) && y[j] < T(1)) ? T(1) / T(6) : T(0);
      break;
    case kRelu:
      for (int64_t j = 0; j < n; ++j) g[j] = y[j] > T(0) ? g[j] : T(0);
      break;
    case kElu:  // y + 1 = exp(x) where x <= 0
      for (int64_t j = 0; j < n; ++j) g[j] *= y[j] > T(0) ? T(1) : y[j] + T(1);
      break;
    case kSelu:
      for (int64_t j = 0; j < n; ++j) {
        g[j] *= y[j] > T(0) ? T(kSeluScale) : y[j] + T(kSeluScale * kSeluAlpha);
      }
      break;
    case kSoftsign:  // 1 / (1 + |x|)^2 = (1 - |y|)^2
      for (int64_t j = 0; j < n; ++j) {
        const T r = T(1) - std::abs(y[j]);
        g[j] *= r * r;
      }
      break;
    case kSoftplus:  // sigmoid(x) = 1 - exp(-y); 1 above the threshold
      for (int64_t j = 0; j < n; ++j) g[j] *= y[j] > T(20) ? T(1) : T(1) - exp_approx(-y[j]);
      break;
    case kExponential:
      for (int64_t j = 0; j < n; ++j) g[j] *= y[j];
      break;
    case kSilu:
      for (int64_t j = 0; j < n; ++j) {
        const T s = sigmoid(x[j]);
        g[j] *= s * (T(1) + x[j] * (T(1) - s));
      }
      break;
    case kGelu:  // Phi(x) + x phi(x)
      for (int64_t j = 0; j < n; ++j) {
        const T density = exp_approx(T(-0.5) * x[j] * x[j]) * T(0.39894228040143267794);
        g[j] *= gelu_cdf(x[j]) + x[j] * density;
      }
      break;
    default:
      break;
  }
}

// x @ W: oneDNN's packed linear (W in torch.nn.Linear layout, packed once per call by
// mkldnn::_reorder_linear_weight) when `onednn`, else torch.mm (W is (K, N)).
at::Tensor matmul(const at::Tensor& x, const at::Tensor& w, bool onednn) {
  if (!onednn) return at::mm(x, w);
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x, w, c10::IValue(), std::string("none"),
                                 c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// The per-step recurrent products with oneDNN's batch-reduce GEMM kernel (torch's
// at::native::cpublas::brgemm, float32, in torch builds that define CPUBLAS_BRGEMM_F32F32F32):
// the weight stays the plain (K, N) matrix and the product is written (or added) straight into
// the step's gate rows. Measured, batch 32, (32, 256) x (256, 1024), 1 thread: 86-89 us, against
// 97-108 us for oneDNN's linear with a packed weight.
#ifdef CPUBLAS_BRGEMM_F32F32F32
constexpr bool kHaveBrgemm = true;
#else
constexpr bool kHaveBrgemm = false;
#endif

bool has_brgemm() { return kHaveBrgemm; }

// Whether the loops use brgemm: float32 and a plain weight (`onednn` false). double: at::mm.
template <typename T>
constexpr bool use_brgemm(bool onednn) {
  return kHaveBrgemm && std::is_same_v<T, float> && !onednn;
}

constexpr int64_t kBrgemmBlock = 256;  // columns per kernel call (measured best, 64-512)
constexpr int64_t kRowPad = 16;  // floats of padding per row of a product scratch (a cache line)
// rows per chunk of the weight gradients' sum: oneDNN's linear of transposed chunks, brgemm
constexpr int64_t kWeightGradRows = 512;
constexpr int64_t kBrgemmGradRows = 128;  // (measured, 32 x 100, 256 units: 128 < 256 < 512)
// rows of whole steps per chunk of the LSTM forward loop's input projection (paired against
// 128, inference: 64 rows 1.00-1.02x, 256 rows 0.97-1.00x)
constexpr int64_t kProjectionRows = 128;
// brgemm sums the LSTM's weight gradients up to this many gate columns (4u), oneDNN's linear
// above (paired, training, brgemm vs linear: 4u = 256 / 800 / 1024 / 1280 / 1536: 1.05 / 1.07 /
// 1.03 / 1.04 / 1.02x; 2048 / 2600: 0.95 / 0.94x)
constexpr int64_t kBrgemmGradMaxCols = 1536;

// out (M, N) = x (M, K) @ w (K, N) (+ out when `add`), given row strides, on this thread.
inline void brgemm_block(int64_t M, int64_t N, int64_t K, const float* x, int64_t ld_x,
                         const float* w, int64_t ld_w, float* out, int64_t ld_out, bool add) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  for (int64_t n0 = 0; n0 < N; n0 += kBrgemmBlock) {
    const int64_t nb = std::min(kBrgemmBlock, N - n0);
    at::native::cpublas::brgemm(M, nb, K, ld_x, ld_w, ld_out, add, x, w + n0, out + n0, false);
  }
#else
  TORCH_CHECK(false, "rnnkit fused_cpu: built without brgemm");
#endif
}

// bfloat16 step products, for the recurrence of a bfloat16 call (fused.py's _vnni): the weight
// in VNNI pairs ((K + 1) / 2, N, 2) (rows k and k + 1 interleaved column by column; an odd K's
// last pair has a zero second row), the left operand rounded to bfloat16 (nearest even), float32
// accumulation, on torch's brgemm (oneDNN's kernel; it takes VNNI weights on CPUs whose
// `could_pack` is false, as this project's AVX512-BF16 machine). Built where the CPU has
// bfloat16 dot products. Measured, (32, 256) x (256, 1024), 1 thread: 44 us against 78 us in
// float32 (the operand's rounding included).
#if defined(CPUBLAS_BRGEMM_BF16BF16F32) && defined(CPUBLAS_BRGEMM_F32F32F32) && \
    (defined(__AVX512BF16__) || defined(__AMX_BF16__))
#define RNNKIT_BF16_PRODUCTS 1
constexpr bool kHaveBf16 = true;
#else
constexpr bool kHaveBf16 = false;
#endif

bool has_bf16_products() { return kHaveBf16; }

// out (M, N) = x (M, K) @ w (+ out when `add`) for bfloat16 x and VNNI w (K even; w points at
// column 0's pair, pair rows ld_w columns apart), on this thread.
inline void brgemm_block(int64_t M, int64_t N, int64_t K, const at::BFloat16* x, int64_t ld_x,
                         const at::BFloat16* w, int64_t ld_w, float* out, int64_t ld_out,
                         bool add) {
#ifdef RNNKIT_BF16_PRODUCTS
  for (int64_t n0 = 0; n0 < N; n0 += kBrgemmBlock) {
    const int64_t nb = std::min(kBrgemmBlock, N - n0);
    at::native::cpublas::brgemm(M, nb, K, ld_x, ld_w, ld_out, add, x, w + 2 * n0, out + n0,
                                /*is_vnni=*/true);
  }
#else
  TORCH_CHECK(false, "rnnkit fused_cpu: built without bfloat16 products");
#endif
}

// out[m, k] = x[m, k] rounded to bfloat16 (nearest even), for m < M, k < K.
inline void round_bf16(const float* x, int64_t M, int64_t K, int64_t ld_x, at::BFloat16* out,
                       int64_t ld_out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ld_x;
    at::BFloat16* o = out + m * ld_out;
    int64_t k = 0;
#if defined(__AVX512BF16__)
    for (; k + 16 <= K; k += 16) {
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(xr + k));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k), reinterpret_cast<const __m256i&>(v));
    }
#endif
    for (; k < K; ++k) o[k] = at::BFloat16(xr[k]);
  }
}

// x's rows (n, columns [c0, c1) of rows ld_x apart) rounded to bfloat16 as VNNI pairs: out
// ((n + 1) / 2, c1 - c0, 2), rows 2p and 2p + 1 interleaved column by column (an odd n's last
// pair: a zero second row).
inline void pack_vnni_rows(const float* x, int64_t n, int64_t ld_x, int64_t c0, int64_t c1,
                           at::BFloat16* out) {
  const int64_t w = c1 - c0;
  for (int64_t p = 0; p < (n + 1) / 2; ++p) {
    const float* r0 = x + 2 * p * ld_x + c0;
    const float* r1 = 2 * p + 1 < n ? r0 + ld_x : nullptr;
    at::BFloat16* o = out + 2 * p * w;
    int64_t c = 0;
#if defined(__AVX512BF16__)
    for (; r1 != nullptr && c + 16 <= w; c += 16) {
      const __m256bh a = _mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + c));
      const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + c));
      const __m256i ai = reinterpret_cast<const __m256i&>(a);
      const __m256i bi = reinterpret_cast<const __m256i&>(b);
      // per 128-bit lane: lo = columns 0-3 (lane 0) / 8-11 (lane 1) paired, hi = 4-7 / 12-15
      const __m256i lo = _mm256_unpacklo_epi16(ai, bi), hi = _mm256_unpackhi_epi16(ai, bi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * c),
                          _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * c + 16),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
    }
#endif
    for (; c < w; ++c) {
      o[2 * c] = at::BFloat16(r0[c]);
      o[2 * c + 1] = at::BFloat16(r1 != nullptr ? r1[c] : 0.0f);
    }
  }
}

// A step's recurrent product x W on brgemm. W: float32 (K, N), or bfloat16 in VNNI pairs
// (Kp / 2, N, 2) with Kp = K rounded up to even (see above); plain, or gate-blocked (gates, K,
// N / gates) / (gates, Kp / 2, N / gates, 2), each gate's block contiguous (fused.py's
// _step_weight). In bfloat16 load() rounds the step's left operand once, before the threads'
// blocks read it.
struct StepProduct {
  const float* wf = nullptr;
  const at::BFloat16* wb = nullptr;
  int64_t K = 0, Kp = 0, N = 0, gates = 1;
  int64_t gate = 0, ld = 0;  // where gate k's block starts and the row stride, in columns
  bool blocked = false;
  at::Tensor xb;  // the rounded left operand (M, Kp), zero in its padding column; once per call
  at::BFloat16* xb_p = nullptr;

  StepProduct() = default;
  StepProduct(const at::Tensor& W, int64_t K, int64_t gates) : K(K), gates(gates) {
    const bool bf16 = W.scalar_type() == at::kBFloat16;
    Kp = bf16 ? (K + 1) / 2 * 2 : K;
    blocked = W.dim() == (bf16 ? 4 : 3);
    const int64_t cols = W.size(W.dim() - (bf16 ? 2 : 1));  // of the whole matrix or a block
    N = blocked ? gates * cols : cols;
    const int64_t n = N / gates;
    ld = blocked ? n : N;
    gate = blocked ? (bf16 ? Kp / 2 : K) * n : n;
    if (bf16) {
      TORCH_CHECK(kHaveBf16, "rnnkit fused_cpu: built without bfloat16 products");
      TORCH_CHECK(W.is_contiguous() && N % gates == 0 &&
                      (blocked ? W.sizes() == at::IntArrayRef({gates, Kp / 2, n, 2})
                               : W.sizes() == at::IntArrayRef({Kp / 2, N, 2})),
                  "rnnkit fused_cpu: a bfloat16 step weight takes VNNI pairs (", Kp / 2,
                  ", N, 2) or (", gates, ", ", Kp / 2, ", N / ", gates, ", 2), contiguous; "
                  "received ", W.sizes());
      wb = W.data_ptr<at::BFloat16>();
    } else {
      wf = W.data_ptr<float>();
    }
  }
  bool bf16() const { return wb != nullptr; }
  // bfloat16: round x (M, K; rows ld_x apart) for this step's blocks (the calling thread)
  void load(const float* x, int64_t M, int64_t ld_x) {
    if (!bf16()) return;
    if (!xb.defined() || xb.numel() < M * Kp) xb = at::zeros({M * Kp}, at::kBFloat16);
    xb_p = xb.data_ptr<at::BFloat16>();
    round_bf16(x, M, K, ld_x, xb_p, Kp);
  }
  // out (M, n) (+ out when add) = x @ W's columns [j0, j0 + n) of gate k, on this thread; x
  // (rows ld_x apart) is read in float32 only (bfloat16: what load() rounded)
  void block(int64_t M, int64_t k, int64_t j0, int64_t n, const float* x, int64_t ld_x,
             float* out, int64_t ld_out, bool add) const {
    if (bf16()) {
      block(M, k, j0, n, xb_p, Kp, out, ld_out, add);
    } else {
      brgemm_block(M, n, K, x, ld_x, wf + k * gate + j0, ld, out, ld_out, add);
    }
  }
  // the same for a left operand already in bfloat16 (M, Kp; rows ld_x apart, zero in an odd
  // K's padding column): a bfloat16 call's input rows
  void block(int64_t M, int64_t k, int64_t j0, int64_t n, const at::BFloat16* x, int64_t ld_x,
             float* out, int64_t ld_out, bool add) const {
    brgemm_block(M, n, Kp, x, ld_x, wb + 2 * (k * gate + j0), ld, out, ld_out, add);
  }
  // out (M, N; row stride ld_out) = x (M, K; contiguous) @ W (+ out when add): gate blocks
  // spread over the threads (a plain (K, gates u) matrix has its gate columns' rows 4 KB apart
  // at u = 256, which the caches hold badly; measured, LSTM forward loop 133 -> 104 us per step,
  // 1 thread), column blocks of a plain W
  void all(const float* x, int64_t M, float* out, int64_t ld_out, bool add) {
    load(x, M, K);
    if (blocked) {
      const int64_t n = N / gates;
      at::parallel_for(0, gates, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) block(M, k, 0, n, x, K, out + k * n, ld_out, add);
      });
      return;
    }
    at::parallel_for(0, (N + kBrgemmBlock - 1) / kBrgemmBlock, 1, [&](int64_t k0, int64_t k1) {
      const int64_t n0 = k0 * kBrgemmBlock, n1 = std::min(N, k1 * kBrgemmBlock);
      block(M, 0, n0, n1 - n0, x, K, out + n0, ld_out, add);
    });
  }
};

// out (B, N; row stride ld) = x (B, K) @ w (+ out when add): brgemm where the loops use it,
// else torch's product.
template <typename T>
void product_into(const at::Tensor& x, const at::Tensor& w, bool onednn, StepProduct& rec, T* out,
                  int64_t ld, bool add) {
  if constexpr (std::is_same_v<T, float>) {
    if (use_brgemm<T>(onednn)) {
      rec.all(x.data_ptr<float>(), x.size(0), out, ld, add);
      return;
    }
  }
  const at::Tensor m = matmul(x, w, onednn);
  const T* mp = m.data_ptr<T>();
  const int64_t B = m.size(0), N = m.size(1);
  for (int64_t b = 0; b < B; ++b) {
    T* o = out + b * ld;
    for (int64_t j = 0; j < N; ++j) o[j] = (add ? o[j] : T(0)) + mp[b * N + j];
  }
}

// dh[b] += dhin[b] (* rd[b]): the part of d h_{t-1} that reaches it through
// h_in = h_{t-1} * rd (no recurrent dropout: rd null); rows of u, split between threads.
template <typename T>
void add_through_dropout(T* dh, const T* dhin, const T* rd, int64_t B, int64_t u, int64_t grain) {
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* out = dh + b * u;
      const T* di = dhin + b * u;
      if (rd != nullptr) {
        const T* m = rd + b * u;
        for (int64_t j = 0; j < u; ++j) out[j] += di[j] * m[j];
      } else {
        for (int64_t j = 0; j < u; ++j) out[j] += di[j];
      }
    }
  });
}

// The weight of the new h in h_t = (1 - a) h_{t-1} + a h' (zoneout; the mask as 0/1), with
// shape (T, B, u), (T, B, 1) or (T, 1, 1): element (t, b, j) without materialising it.
template <typename T>
struct Weight {
  const T* p = nullptr;
  int64_t st = 0, sb = 0, sj = 0;
  explicit Weight(const std::optional<at::Tensor>& a) {
    if (!a.has_value()) return;
    p = a->data_ptr<T>();
    st = a->stride(0);
    sb = a->size(1) == 1 ? 0 : a->stride(1);
    sj = a->size(2) == 1 ? 0 : 1;
  }
  const T* row(int64_t t, int64_t b) const { return p + t * st + b * sb; }
};

// h_t from the new h' (hn): mode 1 keeps h_{t-1} (hp) at a masked step (ok false), mode 2
// interpolates, h_t = hp + a (hn - hp). Mode 0 wrote h' to h_t directly.
template <typename T>
inline void set_h(int64_t mode, bool ok, const T* hn, const T* hp, const Weight<T>& wa,
                  int64_t t, int64_t b, int64_t u, T* h, int64_t j0 = 0) {
  if (mode == 1) {
    std::copy(ok ? hn : hp, (ok ? hn : hp) + u, h);
  } else if (mode == 2) {
    const T* w = wa.row(t, b) + j0 * wa.sj;
    if (wa.sj == 0) {
      const T w0 = w[0];
      for (int64_t j = 0; j < u; ++j) h[j] = hp[j] + w0 * (hn[j] - hp[j]);
    } else {
      for (int64_t j = 0; j < u; ++j) h[j] = hp[j] + w[j] * (hn[j] - hp[j]);
    }
  }
}

// dhn = a * dh: the gradient of h' (a is the weight of h' in h_t; none: dhn = dh).
template <typename T>
inline void weight_grad(const T* dh, const Weight<T>& wa, int64_t t, int64_t b, int64_t u,
                        T* dhn, int64_t j0 = 0) {
  if (wa.p == nullptr) {
    std::copy(dh, dh + u, dhn);
  } else if (wa.sj == 0) {
    const T w0 = wa.row(t, b)[0];
    for (int64_t j = 0; j < u; ++j) dhn[j] = dh[j] * w0;
  } else {
    const T* w = wa.row(t, b) + j0;
    for (int64_t j = 0; j < u; ++j) dhn[j] = dh[j] * w[j];
  }
}

template <typename T>
T* ptr(const std::optional<at::Tensor>& x) {
  return x.has_value() ? x->data_ptr<T>() : nullptr;
}

// The recurrent weight brgemm reads (float32): gate-blocked (gates, u, u) or plain (u, gates * u).
void check_step_weight(const at::Tensor& W, const at::Tensor& G, int64_t gates, bool onednn) {
  if (!use_brgemm<float>(onednn) || G.scalar_type() != at::kFloat) return;
  const int64_t u = G.size(2) / gates;
  if (W.scalar_type() == at::kBFloat16) return;  // StepProduct checks its VNNI shape
  TORCH_CHECK(W.is_contiguous() && (W.sizes() == at::IntArrayRef({gates, u, u}) ||
                                    W.sizes() == at::IntArrayRef({u, gates * u})),
              "rnnkit fused_cpu: the recurrent weight takes (", gates, ", u, u) or (u, ", gates,
              " u), contiguous");
}

void check_contiguous(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous(), "rnnkit fused_cpu: ", name, " must be contiguous");
}

// P: the gates' pre-activations (the shape of G), needed by the derivatives of SiLU and GELU
// when the forward pass saves for the backward pass; ignored otherwise.
void check_pre_activations(const std::optional<at::Tensor>& P, const at::Tensor& G, bool save,
                           int64_t act, int64_t ract) {
  if (!save || !(needs_input(act) || needs_input(ract))) return;
  TORCH_CHECK(P.has_value() && P->is_contiguous() && P->sizes() == G.sizes(),
              "rnnkit fused_cpu: SiLU and GELU need P, a contiguous buffer shaped like G");
}

// The LSTM keeps only the pre-activations its derivatives read: all 4u gate columns when the
// recurrent activation needs them, else the candidate's u columns (a GELU or SiLU activation
// with sigmoid gates: a quarter of the buffer, written forward and read backward).
inline int64_t lstm_pre_width(int64_t act, int64_t ract, int64_t u) {
  return needs_input(ract) ? 4 * u : needs_input(act) ? u : 0;
}

void check_lstm_pre_activations(const std::optional<at::Tensor>& P, const at::Tensor& G,
                                bool save, int64_t act, int64_t ract) {
  const int64_t width = lstm_pre_width(act, ract, G.size(2) / 4);
  if (!save || width == 0) return;
  TORCH_CHECK(P.has_value() && P->is_contiguous() && P->dim() == 3 &&
                  P->size(0) == G.size(0) && P->size(1) == G.size(1) && P->size(2) == width,
              "rnnkit fused_cpu: the LSTM with SiLU or GELU needs P, a contiguous (T, B, ", width,
              ") buffer");
}

// LayerNorm of one row, as torch.native_layer_norm: mean and 1 / sqrt(biased variance + eps).
// sum of f(j) for j < n in 16 independent partial sums: the loop vectorises without letting the
// compiler reassociate floating-point sums anywhere else.
template <typename T, typename F>
inline T lane_sum(int64_t n, F f) {
  T acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int64_t k = 0; k < 16; ++k) acc[k] += f(j + k);
  }
  T total = 0;
  for (; j < n; ++j) total += f(j);
  for (int64_t k = 0; k < 16; ++k) total += acc[k];
  return total;
}

template <typename T>
inline void row_moments(const T* x, int64_t n, double eps, T& mean, T& rstd) {
  const T mu = lane_sum<T>(n, [x](int64_t j) { return x[j]; }) / T(n);
  const T sq = lane_sum<T>(n, [x, mu](int64_t j) { return (x[j] - mu) * (x[j] - mu); });
  mean = mu;
  rstd = T(1) / std::sqrt(sq / T(n) + T(eps));
}

// The input gradient of a row LayerNorm y = xhat * gamma (+ beta), xhat = (x - mean) * rstd:
// dx = rstd * (dy gamma - mean(dy gamma) - xhat mean(dy gamma xhat)), in two passes over the row
// (the two means, with the parameters' gradients on the way; then dx). Adds dy * xhat to dgamma
// and dy to dbeta when given; adds to dx with `add`. dx may be x itself (each element read
// before it is written).
template <typename T, bool kGamma, bool kBeta>
inline void layer_norm_grad_means(const T* __restrict__ dy, const T* __restrict__ x,
                                  const T* __restrict__ gamma, T mean, T rstd, int64_t n,
                                  T* __restrict__ dgamma, T* __restrict__ dbeta, T& m1, T& m2) {
  T s1[16] = {}, s2[16] = {};  // 16 independent partial sums each (as lane_sum)
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int64_t k = 0; k < 16; ++k) {
      const T d = dy[j + k], xhat = (x[j + k] - mean) * rstd, dg = d * gamma[j + k];
      s1[k] += dg;
      s2[k] += dg * xhat;
      if constexpr (kGamma) dgamma[j + k] += d * xhat;
      if constexpr (kBeta) dbeta[j + k] += d;
    }
  }
  T t1 = 0, t2 = 0;
  for (; j < n; ++j) {
    const T d = dy[j], xhat = (x[j] - mean) * rstd, dg = d * gamma[j];
    t1 += dg;
    t2 += dg * xhat;
    if constexpr (kGamma) dgamma[j] += d * xhat;
    if constexpr (kBeta) dbeta[j] += d;
  }
  for (int64_t k = 0; k < 16; ++k) {
    t1 += s1[k];
    t2 += s2[k];
  }
  m1 = t1 / T(n);
  m2 = t2 / T(n);
}

template <typename T>
inline void row_layer_norm_backward(const T* dy, const T* x, const T* gamma, T mean, T rstd,
                                    int64_t n, T* dx, T* dgamma, T* dbeta = nullptr,
                                    bool add = false) {
  T m1, m2;
  if (dgamma != nullptr && dbeta != nullptr) {
    layer_norm_grad_means<T, true, true>(dy, x, gamma, mean, rstd, n, dgamma, dbeta, m1, m2);
  } else if (dgamma != nullptr) {
    layer_norm_grad_means<T, true, false>(dy, x, gamma, mean, rstd, n, dgamma, dbeta, m1, m2);
  } else {
    layer_norm_grad_means<T, false, false>(dy, x, gamma, mean, rstd, n, dgamma, dbeta, m1, m2);
  }
  auto grad = [&](int64_t j) {
    return rstd * (dy[j] * gamma[j] - m1 - (x[j] - mean) * rstd * m2);
  };
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {  // a block's values before its stores: dx may be x
    T v[16];
    for (int64_t k = 0; k < 16; ++k) v[k] = grad(j + k);
    if (add) {
      for (int64_t k = 0; k < 16; ++k) dx[j + k] += v[k];
    } else {
      for (int64_t k = 0; k < 16; ++k) dx[j + k] = v[k];
    }
  }
  for (; j < n; ++j) {
    const T v = grad(j);
    dx[j] = add ? dx[j] + v : v;
  }
}

// The step loops split a step's work between threads by hidden units where they can: a thread
// computes the gate columns of its units (their share of the recurrent product, then the gate
// math for every batch row), so its slice of the recurrent weight stays in its own cache and no
// product row moves between cores. Measured with 2 threads, 32 x 100, 256 units: the loops split
// by batch rows instead took longer than with 1 thread. Layer norm needs whole rows (row
// statistics), so its loops split by batch rows after one product. Units per part: whole cache
// lines of h (multiples of 16).
inline int64_t unit_chunk(int64_t u) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per = (u + threads - 1) / threads;
  return std::min(u, (per + 15) / 16 * 16);
}

// f(j0, j1) for each part [j0, j1) of `chunk` units (unit_chunk), the parts spread over threads.
template <typename F>
inline void for_unit_parts(int64_t u, int64_t chunk, const F& f) {
  at::parallel_for(0, (u + chunk - 1) / chunk, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) f(p * chunk, std::min(u, (p + 1) * chunk));
  });
}

// A backward step's per-row gradients, f(b0, b1, j0, j1): split by batch rows with layer norm
// (its statistics need whole rows), else by hidden units like the forward steps.
template <typename F>
inline void for_backward_parts(bool ln, int64_t B, int64_t grain, int64_t u, int64_t chunk,
                               const F& f) {
  if (ln) {
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) { f(b0, b1, int64_t(0), u); });
  } else {
    for_unit_parts(u, chunk, [&](int64_t j0, int64_t j1) { f(int64_t(0), B, j0, j1); });
  }
}

template <typename T>
constexpr int64_t kLineValues = 64 / static_cast<int64_t>(sizeof(T));  // values per cache line

// Zeroed scratch memory of n values from torch's CPU allocator, which aligns to a cache line.
// The loops' threads write disjoint column ranges of its rows, whole cache lines of them when
// the base is aligned; std::vector's 16-byte alignment let a line straddle two threads' ranges
// on every row (false sharing). (Not measurable above this machine's noise on 2 threads.)
template <typename T>
struct Scratch {
  at::Tensor buf;
  explicit Scratch(int64_t n)
      : buf(at::zeros({std::max<int64_t>(n, 0)}, at::dtype(c10::CppTypeToScalarType<T>::value))) {}
  T* data() const { return buf.data_ptr<T>(); }
};

// Scratch rows of n values, one per thread of the loops' parallel regions (each on its own cache
// lines), allocated once per call (zeroed: also per-thread accumulators, summed by the caller
// after the loop).
template <typename T>
struct ThreadRows {
  int64_t n, stride, threads;
  Scratch<T> data;
  explicit ThreadRows(int64_t n)
      : n(n),
        stride((n + kLineValues<T> - 1) / kLineValues<T> * kLineValues<T>),
        threads(std::max<int64_t>(1, at::get_num_threads())),
        data(stride * threads) {}
  T* mine() {
    const int64_t tid = at::get_thread_num();
    TORCH_CHECK(tid < threads, "rnnkit fused_cpu: thread ", tid, " of ", threads);
    return data.data() + tid * stride;
  }
  void sum_into(T* out) const {  // out[k] += every thread's k-th value
    for (int64_t i = 0; i < threads; ++i) {
      const T* row = data.data() + i * stride;
      for (int64_t k = 0; k < n; ++k) out[k] += row[k];
    }
  }
};

// h_{t-1} as it enters the recurrent product: H[t], or H[t] * rd written to Hin[s].
inline at::Tensor recurrent_input(const at::Tensor& H, int64_t t,
                                  const std::optional<at::Tensor>& Hin,
                                  const std::optional<at::Tensor>& rd, int64_t s) {
  if (!rd.has_value()) return H[t];
  at::Tensor hin = (*Hin)[s];
  at::mul_out(hin, H[t], *rd);
  return hin;
}

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c in [c0, c1): 16 x 16 tiles in
// AVX-512 registers where the CPU has them (float), the rest element by element.
#if defined(__AVX512F__)
inline void transpose_tile16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved element by element
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then by pairs of elements
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // r[4q + k], 128-bit lane L: column 4L + k of rows 4q .. 4q + 3; gather the lanes
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld_dst, r[i]);
}
#endif

template <typename T>
void transpose_cols(const T* src, int64_t rows, int64_t ld_src, T* dst, int64_t ld_dst,
                    int64_t c0, int64_t c1) {
  int64_t c = c0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const int64_t r16 = rows / 16 * 16;
    for (; c + 16 <= c1; c += 16) {
      for (int64_t r = 0; r < r16; r += 16) {
        transpose_tile16(src + r * ld_src + c, ld_src, dst + c * ld_dst + r, ld_dst);
      }
      for (int64_t k = c; k < c + 16; ++k) {
        for (int64_t r = r16; r < rows; ++r) dst[k * ld_dst + r] = src[r * ld_src + k];
      }
    }
  }
#endif
  for (; c < c1; ++c) {
    for (int64_t r = 0; r < rows; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
  }
}

// The weight gradients' operands, transposed a few steps at a time while their rows are in
// cache: the rows [r0, r0 + n) of src_all (T B, 4u) into st (4u, n) (src_all null: not those),
// of x2 and h_in into lt rows [0, I) and [I, I + u) (I + u, n), row-major (see
// add_weight_grads, brgemm_weight_grads).
// x_p: the input rows from r0 on (I columns; null, I = 0: none).
template <typename T>
void transpose_rows(const T* src_all, int64_t G4, const T* x_p, int64_t I, const T* hin_all,
                    int64_t u, int64_t r0, int64_t n, T* st, T* lt) {
  const int64_t GS = src_all != nullptr ? G4 : 0;
  const int64_t K = GS + I + u, ld = n;
  const T* s_p = src_all != nullptr ? src_all + r0 * G4 : nullptr;
  const T* h_p = hin_all + r0 * u;
  // column blocks of 64 of [src | x | h_in] (a block may span two of them), spread over threads
  at::parallel_for(0, (K + 63) / 64, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t c0 = p0 * 64; c0 < std::min(p1 * 64, K); c0 += 64) {
      const int64_t c1 = std::min(c0 + 64, K);
      if (c0 < GS) transpose_cols(s_p, n, G4, st, ld, c0, std::min(c1, GS));
      if (c1 > GS && c0 < GS + I) {
        transpose_cols(x_p, n, I, lt, ld, std::max(c0, GS) - GS, std::min(c1, GS + I) - GS);
      }
      if (c1 > GS + I) {
        transpose_cols(h_p, n, u, lt + I * ld, ld, std::max(c0, GS + I) - GS - I, c1 - GS - I);
      }
    }
  });
}

// DWU += LT ST^T for row-major LT (K, n) and ST (4u, n) (`first`: DWU = LT ST^T, DWU comes
// uninitialised): a chunk of the weight gradients' sum over all steps. oneDNN's product of such
// operands runs at the core's peak, against ~80% for the same product from the (T B, K) rows (it
// reorders the large operand every call). Measured, LSTM 128 -> 256 units at 32 x 100, 1
// thread: dW and dU 15.0-15.3 ms from the rows, 12.4-12.8 ms from all rows transposed at once
// plus 1.5 ms for the transposition; chunks of ~512 rows keep the transposed operands small (a
// few MB instead of 18 MB at that shape).
template <typename T>
void add_weight_grads(const at::Tensor& DWU, const at::Tensor& lt_buf, const at::Tensor& st_buf,
                      int64_t K, int64_t G4, int64_t n, bool first) {
  const at::Tensor a = lt_buf.narrow(0, 0, K * n).view({K, n});
  const at::Tensor b = st_buf.narrow(0, 0, G4 * n).view({G4, n});
  static const bool have_linear =  // oneDNN's linear, in torch builds that register it
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}).has_value();
  if (std::is_same_v<T, float> && have_linear) {
    const at::Tensor prod = matmul(a, b, /*onednn=*/true);  // a b^T
    first ? DWU.copy_(prod) : DWU.add_(prod);
  } else {
    first ? DWU.copy_(at::mm(a, b.t())) : DWU.addmm_(a, b.t());
  }
}

// The column block each thread of brgemm_weight_grads sums: at most kBrgemmBlock, as many per
// thread (3u = 768 with 2 threads: 4 x 192, not 3 x 256).
inline int64_t weight_grad_block(int64_t G4) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per = kBrgemmBlock * threads;
  const int64_t parts = threads * ((G4 + per - 1) / per);
  return ((G4 + parts - 1) / parts + 15) / 16 * 16;
}

// DWU (K, 4u) = LT rows (K, n) @ rows (n, 4u; row stride G4), or DWU += that (`add`): a chunk of
// the weight gradients with brgemm, which reads the gate-gradient rows as they are (no
// transposed copy, no product temporary; column blocks spread over threads), up to
// kBrgemmGradMaxCols. Measured against add_weight_grads, LSTM 32 x 100, 128 -> 256, paired:
// training 1.03x (1 and 2 threads).
template <typename T>
void brgemm_weight_grads(const at::Tensor& DWU, const T* lt, int64_t K, const T* rows,
                         int64_t G4, int64_t n, bool add) {
  if constexpr (std::is_same_v<T, float>) {
    float* out = DWU.data_ptr<float>();
    const int64_t block = weight_grad_block(G4);
    at::parallel_for(0, (G4 + block - 1) / block, 1, [&](int64_t k0, int64_t k1) {
      const int64_t n0 = k0 * block, n1 = std::min(G4, k1 * block);
      brgemm_block(K, n1 - n0, n, lt, n, rows + n0, G4, out + n0, G4, add);
    });
  } else {
    TORCH_CHECK(false, "rnnkit fused_cpu: brgemm weight gradients are float32 only");
  }
}

// brgemm_weight_grads in bfloat16 (a bfloat16 call): LT (K, n) rounded into lt_b (K, n_p; n_p =
// n rounded up to even, a zero last column for an odd n), then DWU (K, 4u) (+)= that @ rows (n,
// 4u) rounded to bfloat16, each thread packing its column block of the rows into VNNI pairs
// (its row of `pack`) first.
template <typename T>
void brgemm_weight_grads_bf16(const at::Tensor& DWU, const T* lt, at::BFloat16* lt_b, int64_t K,
                              const T* rows, int64_t G4, int64_t n, bool add,
                              ThreadRows<at::BFloat16>& pack) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n_p = (n + 1) / 2 * 2;
    round_bf16(lt, K, n, n, lt_b, n_p);
    if (n_p > n) {
      for (int64_t k = 0; k < K; ++k) lt_b[k * n_p + n] = at::BFloat16(0.0f);
    }
    float* out = DWU.data_ptr<float>();
    const int64_t block = weight_grad_block(G4);
    at::parallel_for(0, (G4 + block - 1) / block, 1, [&](int64_t k0, int64_t k1) {
      at::BFloat16* pk = pack.mine();
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t n0 = k * block, n1 = std::min(G4, n0 + block);
        pack_vnni_rows(rows, n, G4, n0, n1, pk);
        brgemm_block(K, n1 - n0, n_p, lt_b, n_p, pk, n1 - n0, out + n0, G4, add);
      }
    });
  } else {
    TORCH_CHECK(false, "rnnkit fused_cpu: bfloat16 weight gradients are float32 only");
  }
}

// out[k] = x[k] (bfloat16) as float32, k < n.
inline void widen_bf16(const at::BFloat16* x, int64_t n, float* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<float>(x[k]);
}

// The end of backward step t of the LSTM and the SimpleRNN, split by units: dh_{t-1} = dY[t-1]
// + (src WT) * rd (+ (1 - a) dh where h is kept by zoneout or a mask), with src (B, K) the step's
// gradients entering the recurrent product and WT (K, u) (rec: WT for brgemm); r_scratch (B,
// u): the product, when brgemm computes it.
template <typename T>
void previous_h_grad(const at::Tensor& src, const at::Tensor& WT, bool onednn, StepProduct& rec,
                     int64_t u, int64_t chunk, const T* dY_all, int64_t t, const T* rd_p,
                     const Weight<T>& wa, const T* dh_p, const T* dhn_all, T* r_scratch,
                     T* dh2_p) {
  const int64_t B = src.size(0), K = src.size(1);
  const T* dHt = t > 0 ? dY_all + (t - 1) * B * u : nullptr;  // H[0] is no output
  const bool brg = use_brgemm<T>(onednn);
  at::Tensor r;
  const T* r_p = r_scratch;
  if (!brg) {
    r = matmul(src, WT, onednn);
    r_p = r.data_ptr<T>();
  }
  if constexpr (std::is_same_v<T, float>) {
    if (brg) rec.load(src.data_ptr<float>(), B, K);
  }
  for_unit_parts(u, chunk, [&](int64_t j0, int64_t j1) {
    if constexpr (std::is_same_v<T, float>) {
      if (brg) {
        rec.block(B, 0, j0, j1 - j0, src.data_ptr<float>(), K, r_scratch + j0, u,
                  /*add=*/false);
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * u;
      T* out = dh2_p + o;
      for (int64_t j = j0; j < j1; ++j) {
        const T rj = rd_p != nullptr ? r_p[o + j] * rd_p[o + j] : r_p[o + j];
        out[j] = (dHt != nullptr ? dHt[o + j] : T(0)) + rj;
      }
      if (wa.p != nullptr) {
        for (int64_t j = j0; j < j1; ++j) out[j] += dh_p[o + j] - dhn_all[o + j];
      }
    }
  });
}

// mode: 0 h_t = h'; 1 h_t = valid ? h' : h_{t-1}; 2 h_t = lerp(h_{t-1}, h', a).
template <typename T>
void lstm_forward_impl(const at::Tensor& G, const at::Tensor& W, bool onednn, const at::Tensor& H,
                       const at::Tensor& C, const std::optional<at::Tensor>& CN,
                       const at::Tensor& TC, const std::optional<at::Tensor>& Hin,
                       const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                       const std::optional<at::Tensor>& valid, int64_t act, int64_t ract,
                       int64_t mode, bool save, const std::optional<at::Tensor>& M,
                       const std::optional<at::Tensor>& MU_h, const std::optional<at::Tensor>& RS_h,
                       const std::optional<at::Tensor>& MU_c, const std::optional<at::Tensor>& RS_c,
                       const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& g_c,
                       const std::optional<at::Tensor>& b_c, const std::optional<at::Tensor>& P,
                       double eps, const std::optional<at::Tensor>& XS,
                       const std::optional<at::Tensor>& W_in,
                       const std::optional<at::Tensor>& b_in) {
  const int64_t steps = G.size(0), B = G.size(1), G4 = G.size(2), u = G4 / 4;
  const bool ln = g_h.has_value();
  const bool masked = valid.has_value();
  // The input projection computed here (XS given; G comes uninitialised): x W for a chunk of
  // steps at a time, each thread its own units' columns, just before the steps read them, so
  // that the gate pass finds them in cache rather than in memory (written by a projection of
  // all steps beforehand, (T, B, 4u) is 13 MB at 32 x 100, 256 units); the bias is added in the
  // gate pass. In a bfloat16 call XS holds the bfloat16 input rows (no float32 copy of the
  // projection, no cast pass: paired against projecting outside the loop, 32 x 100, 128 -> 256,
  // 1 thread, training 1.01-1.10x, inference 1.12x).
  const bool project = XS.has_value();
  const int64_t I = project ? XS->size(1) : 0;
  const int64_t proj_steps = std::max<int64_t>(1, kProjectionRows / B);
  const T* bin = project && b_in.has_value() ? b_in->data_ptr<T>() : nullptr;
  T* g_all = G.data_ptr<T>();
  T* p_all = save ? ptr<T>(P) : nullptr;  // the gates' pre-activations (SiLU, GELU)
  const int64_t p_width = lstm_pre_width(act, ract, u);
  T* h_all = H.data_ptr<T>();
  T* c_all = C.data_ptr<T>();
  T* cn_all = ptr<T>(CN);
  T* tc_all = TC.data_ptr<T>();
  const bool* v_all = masked ? valid->data_ptr<bool>() : nullptr;
  const Weight<T> wa(a);
  Scratch<T> hbuf(mode != 0 ? B * u : 0);
  const int64_t grain = std::max<int64_t>(1, 8192 / G4);
  const int64_t chunk = unit_chunk(u);
  const bool keep_stats = ln && save;  // what the backward pass needs: M, MU_*, RS_*
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  const T* gc = ln ? g_c->data_ptr<T>() : nullptr;
  const T* bc = ln ? b_c->data_ptr<T>() : nullptr;
  T* mu_h = keep_stats ? MU_h->data_ptr<T>() : nullptr;
  T* rs_h = keep_stats ? RS_h->data_ptr<T>() : nullptr;
  T* mu_c = keep_stats ? MU_c->data_ptr<T>() : nullptr;
  T* rs_c = keep_stats ? RS_c->data_ptr<T>() : nullptr;
  const bool brg = use_brgemm<T>(onednn);
  // brgemm's product h_in U, rows padded by a cache line: written into the gate rows themselves
  // (add, 4 KB apart at u = 256) it took ~7% longer (paired, 32 x 100, 256 units, 1 thread:
  // inference 1.07x, training 1.03x; 20 x 35, 200 units: inference 1.08x)
  const int64_t ld_r = G4 + kRowPad;
  Scratch<T> r_scratch(brg ? B * ld_r : 0);
  // brgemm's weights: gate-blocked (4, K, u), or for calls of a few steps the plain (K, 4u)
  // matrix as it comes (no copy; its gate columns' rows lie 4u apart); bfloat16 in VNNI pairs
  // in a bfloat16 call
  StepProduct rec;
  if (brg) rec = StepProduct(W, u, 4);
  // W_in as the projection reads it: float32 (4, I, u) or (I, 4u), or in a bfloat16 call (XS
  // bfloat16, I even) VNNI pairs, gate-blocked or plain as the recurrent weight
  StepProduct proj;
  if (project) proj = StepProduct(*W_in, I, 4);
  const bool xs_bf16 = project && XS->scalar_type() == at::kBFloat16;
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hin = recurrent_input(H, t, Hin, rd, s);
    T* g_t = g_all + t * B * G4;
    const T* c_prev = c_all + t * B * u;
    T* cn_t = masked ? cn_all + s * B * u : c_all + (t + 1) * B * u;
    T* tc_t = tc_all + s * B * u;
    T* h_prev = h_all + t * B * u;
    T* h_next = h_all + (t + 1) * B * u;
    T* c_next = c_all + (t + 1) * B * u;
    T* m_keep = keep_stats ? M->data_ptr<T>() + s * B * G4 : nullptr;
    // The gate math of row b for units [j0, j1) (layer norm: whole rows only). mm: the row of
    // h_in U.
    auto gates = [&](int64_t b, int64_t j0, int64_t j1, const T* mm) {
      const int64_t n = j1 - j0;
      T* g = g_t + b * G4;
      if (ln) {  // g += LN(h_in U) with gamma g_h, no beta
        T mu, rs;
        row_moments(mm, G4, eps, mu, rs);
        if (keep_stats) {
          std::copy(mm, mm + G4, m_keep + b * G4);  // mm: the scratch or torch's product
          mu_h[t * B + b] = mu;
          rs_h[t * B + b] = rs;
        }
        for (int64_t k = 0; k < G4; ++k) g[k] += (mm[k] - mu) * rs * gh[k];
      } else if (bin != nullptr) {
        for (int64_t k = 0; k < 4; ++k) {
          for (int64_t j = j0; j < j1; ++j) g[k * u + j] += mm[k * u + j] + bin[k * u + j];
        }
      } else {
        for (int64_t k = 0; k < 4; ++k) {
          for (int64_t j = j0; j < j1; ++j) g[k * u + j] += mm[k * u + j];
        }
      }
      if (p_all != nullptr && p_width == G4) {
        T* p = p_all + (t * B + b) * G4;
        for (int64_t k = 0; k < 4; ++k) std::copy(g + k * u + j0, g + k * u + j1, p + k * u + j0);
      } else if (p_all != nullptr) {  // the candidate's columns only
        std::copy(g + 2 * u + j0, g + 2 * u + j1, p_all + (t * B + b) * u + j0);
      }
      act_inplace(ract, g + j0, n);          // i
      act_inplace(ract, g + u + j0, n);      // f
      act_inplace(act, g + 2 * u + j0, n);   // c~
      act_inplace(ract, g + 3 * u + j0, n);  // o
      const T *i = g, *f = g + u, *gg = g + 2 * u, *o = g + 3 * u, *cp = c_prev + b * u;
      T* cn = cn_t + b * u;
      for (int64_t j = j0; j < j1; ++j) cn[j] = f[j] * cp[j] + i[j] * gg[j];
      T* tc = tc_t + b * u;
      if (ln) {  // tc = act(LN(c') with gamma g_c, beta b_c)
        T mu, rs;
        row_moments(cn, u, eps, mu, rs);
        if (keep_stats) {
          mu_c[t * B + b] = mu;
          rs_c[t * B + b] = rs;
        }
        for (int64_t j = 0; j < u; ++j) tc[j] = (cn[j] - mu) * rs * gc[j] + bc[j];
        act_inplace(act, tc, u);
      } else {
        act_out(act, cn + j0, tc + j0, n);
      }
      T* hn = mode == 0 ? h_next + b * u : hbuf.data() + b * u;
      for (int64_t j = j0; j < j1; ++j) hn[j] = o[j] * tc[j];
      const bool ok = masked ? v_all[t * B + b] : true;
      if (masked) {
        const T* src = ok ? cn : cp;
        std::copy(src + j0, src + j1, c_next + b * u + j0);
      }
      set_h(mode, ok, hn + j0, h_prev + b * u + j0, wa, t, b, n, h_next + b * u + j0, j0);
    };
    if (ln) {  // one product (into M[s] when kept), then whole rows
      at::Tensor m;
      const T* m_all = nullptr;
      if constexpr (std::is_same_v<T, float>) {
        if (brg) {
          rec.all(hin.data_ptr<float>(), B, r_scratch.data(), ld_r, /*add=*/false);
          m_all = r_scratch.data();
        }
      }
      if (!brg) {
        m = matmul(hin, W, onednn);
        m_all = m.data_ptr<T>();
      }
      const int64_t ld_m = brg ? ld_r : G4;
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) gates(b, 0, u, m_all + b * ld_m);
      });
      continue;
    }
    at::Tensor m;  // without brgemm: the whole product first (torch's kernel, its own threads)
    if (!brg) m = matmul(hin, W, onednn);
    const T* m_all = brg ? nullptr : m.data_ptr<T>();
    const T* x_p = hin.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      if (brg) rec.load(x_p, B, u);
    }
    for_unit_parts(u, chunk, [&](int64_t j0, int64_t j1) {
      if constexpr (std::is_same_v<T, float>) {
        if (project && t % proj_steps == 0) {  // x W for these columns of the next steps
          const int64_t rows = std::min(proj_steps, steps - t) * B;
          for (int64_t k = 0; k < 4; ++k) {
            if (xs_bf16) {
              proj.block(rows, k, j0, j1 - j0, XS->data_ptr<at::BFloat16>() + t * B * I, I,
                         g_t + k * u + j0, G4, /*add=*/false);
            } else {
              proj.block(rows, k, j0, j1 - j0, XS->data_ptr<float>() + t * B * I, I,
                         g_t + k * u + j0, G4, /*add=*/false);
            }
          }
        }
        if (brg) {  // (h_in U)[:, k u + j] for the 4 gates, j in [j0, j1), into the scratch
          for (int64_t k = 0; k < 4; ++k) {
            rec.block(B, k, j0, j1 - j0, x_p, u, r_scratch.data() + k * u + j0, ld_r,
                      /*add=*/false);
          }
        }
      }
      for (int64_t b = 0; b < B; ++b) {
        gates(b, j0, j1, brg ? r_scratch.data() + b * ld_r : m_all + b * G4);
      }
    });
  }
}

void lstm_forward(const at::Tensor& G, const at::Tensor& W, bool onednn, const at::Tensor& H,
                  const at::Tensor& C, const std::optional<at::Tensor>& CN, const at::Tensor& TC,
                  const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                  const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& valid,
                  int64_t act, int64_t ract, int64_t mode, bool save,
                  const std::optional<at::Tensor>& M, const std::optional<at::Tensor>& MU_h,
                  const std::optional<at::Tensor>& RS_h, const std::optional<at::Tensor>& MU_c,
                  const std::optional<at::Tensor>& RS_c, const std::optional<at::Tensor>& g_h,
                  const std::optional<at::Tensor>& g_c, const std::optional<at::Tensor>& b_c,
                  const std::optional<at::Tensor>& P, double eps,
                  const std::optional<at::Tensor>& XS, const std::optional<at::Tensor>& W_in,
                  const std::optional<at::Tensor>& b_in) {
  for (const auto* x : {&G, &H, &C, &TC}) check_contiguous(*x, "G/H/C/TC");
  check_lstm_pre_activations(P, G, save, act, ract);
  TORCH_CHECK(!g_h.has_value() || (g_c.has_value() && b_c.has_value()),
              "rnnkit fused_cpu: a layer-norm LSTM needs g_h, g_c and b_c");
  if (XS.has_value()) {  // the input projection in the loop: brgemm, float32, no layer norm
    const int64_t TB = G.size(0) * G.size(1), u = G.size(2) / 4, I = XS->size(1);
    TORCH_CHECK(use_brgemm<float>(onednn) && G.scalar_type() == at::kFloat && !g_h.has_value(),
                "rnnkit fused_cpu: the LSTM loop's input projection needs brgemm, float32 and "
                "no layer norm");
    TORCH_CHECK(W_in.has_value() && XS->is_contiguous() && XS->dim() == 2 && XS->size(0) == TB &&
                    (!b_in.has_value() || (b_in->is_contiguous() && b_in->numel() == 4 * u)),
                "rnnkit fused_cpu: the input projection takes XS (T B, I), contiguous, and b_in "
                "(4u)");
    if (XS->scalar_type() == at::kBFloat16) {  // StepProduct checks the VNNI weight's shape
      TORCH_CHECK(I % 2 == 0 && W_in->scalar_type() == at::kBFloat16,
                  "rnnkit fused_cpu: bfloat16 input rows XS take an even width I and a "
                  "bfloat16 VNNI W_in; received I = ", I, ", W_in ", W_in->scalar_type());
    } else {
      TORCH_CHECK(XS->scalar_type() == at::kFloat && W_in->is_contiguous() &&
                      (W_in->sizes() == at::IntArrayRef({4, I, u}) ||
                       W_in->sizes() == at::IntArrayRef({I, 4 * u})),
                  "rnnkit fused_cpu: float32 input rows XS (T B, I) take W_in (4, I, u) or "
                  "(I, 4u), contiguous");
    }
  }
  check_step_weight(W, G, 4, onednn);
  if (a.has_value()) check_contiguous(*a, "a");
  if (valid.has_value()) check_contiguous(*valid, "valid");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_lstm_forward", [&] {
    lstm_forward_impl<scalar_t>(G, W, onednn, H, C, CN, TC, Hin, rd, a, valid, act, ract, mode,
                                save, M, MU_h, RS_h, MU_c, RS_c, g_h, g_c, b_c, P, eps, XS, W_in,
                                b_in);
  });
}

// Backward through time. On return G holds the gate gradients (of the gate pre-activations;
// with layer norm M[t] holds the gradient of h_in U, the input of the gates' LayerNorm), dh and
// dc the gradients of h_0 and c_0 (dh only with h0_grad: without, the first step's product
// through WT is skipped and WT of a 1-step call is never read); db (without layer norm)
// accumulates the column sums of the gate gradients, the bias gradient, while they are in cache;
// dg_h accumulates the gates' LayerNorm gamma gradient, dg_c and db_c the cell LayerNorm's gamma
// and beta gradients.
template <typename T>
void lstm_backward_impl(const at::Tensor& G, const at::Tensor& WT, bool onednn, const at::Tensor& H,
                        const at::Tensor& C, const std::optional<at::Tensor>& CN,
                        const at::Tensor& TC, const at::Tensor& dY, const at::Tensor& dh_in,
                        const at::Tensor& dc_in, const std::optional<at::Tensor>& rd,
                        const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& valid,
                        int64_t act, int64_t ract, const std::optional<at::Tensor>& M,
                        const std::optional<at::Tensor>& MU_h,
                        const std::optional<at::Tensor>& RS_h,
                        const std::optional<at::Tensor>& MU_c,
                        const std::optional<at::Tensor>& RS_c,
                        const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& g_c,
                        const std::optional<at::Tensor>& b_c, const std::optional<at::Tensor>& dg_c,
                        const std::optional<at::Tensor>& db_c,
                        const std::optional<at::Tensor>& dg_h,
                        const std::optional<at::Tensor>& db, const std::optional<at::Tensor>& P,
                        const std::optional<at::Tensor>& XS, const std::optional<at::Tensor>& HS,
                        const std::optional<at::Tensor>& DWU, bool h0_grad) {
  const int64_t steps = G.size(0), B = G.size(1), G4 = G.size(2), u = G4 / 4;
  const T* p_all = ptr<T>(P);
  const bool p_full = lstm_pre_width(act, ract, u) == G4;  // else the candidate's columns
  // the weight gradients [dW; dU] (K = I + u, 4u), accumulated chunk by chunk of rows
  const int64_t K = DWU.has_value() ? DWU->size(0) : 0;
  const bool brg = use_brgemm<T>(onednn);
  // the weight gradients by brgemm, in bfloat16 in a bfloat16 call (its weight in VNNI pairs)
  const bool bf16_grads = brg && WT.scalar_type() == at::kBFloat16;
  const bool brg_grads = brg && (G4 <= kBrgemmGradMaxCols || bf16_grads);
  const int64_t grad_rows = brg_grads ? kBrgemmGradRows : kWeightGradRows;
  const int64_t chunk_rows = (grad_rows + B - 1) / B * B;  // whole steps
  // a chunk's transposed operands (K, rows) and, without brgemm, (4u, rows); in bfloat16, the
  // former rounded (K, rows rounded up to even) and each thread's VNNI pairs of the gradients
  at::Tensor lt_buf, st_buf;
  const int64_t rows_p = (chunk_rows + 1) / 2 * 2;
  Scratch<at::BFloat16> lt_b(DWU.has_value() && bf16_grads ? K * rows_p : 0);
  ThreadRows<at::BFloat16> pack(DWU.has_value() && bf16_grads ? rows_p * weight_grad_block(G4)
                                                               : 0);
  if (DWU.has_value()) {
    lt_buf = at::empty({K * chunk_rows}, DWU->options());
    if (!brg_grads) st_buf = at::empty({G4 * chunk_rows}, DWU->options());
  }
  // the input rows XS (float32; bfloat16 in a bfloat16 call, widened a chunk at a time for the
  // weight gradients)
  const int64_t I = XS.has_value() ? XS->size(1) : 0;
  const bool xs_bf16 = I > 0 && XS->scalar_type() == at::kBFloat16;
  Scratch<float> x_wide(xs_bf16 ? chunk_rows * I : 0);
  const bool ln = g_h.has_value();
  const bool masked = valid.has_value();
  T* g_all = G.data_ptr<T>();
  const T* c_all = C.data_ptr<T>();
  const T* tc_all = TC.data_ptr<T>();
  const T* dY_all = dY.data_ptr<T>();
  const T* rd_p = ptr<T>(rd);
  const bool* v_all = masked ? valid->data_ptr<bool>() : nullptr;
  const Weight<T> wa(a);
  at::Tensor dh = dh_in, dc = dc_in;
  at::Tensor dh2 = at::empty_like(dh);
  at::Tensor dhn_t = at::empty_like(dh);  // the gradient of the new h'
  at::Tensor dpc_buf = at::empty_like(dh);
  T* dpc_all = dpc_buf.data_ptr<T>();
  T* dhn_all = dhn_t.data_ptr<T>();
  T* dc_p = dc.data_ptr<T>();
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  const T* gc = ln ? g_c->data_ptr<T>() : nullptr;
  const T* bc = ln ? b_c->data_ptr<T>() : nullptr;
  const T* mu_h = ln ? MU_h->data_ptr<T>() : nullptr;
  const T* rs_h = ln ? RS_h->data_ptr<T>() : nullptr;
  const T* mu_c = ln ? MU_c->data_ptr<T>() : nullptr;
  const T* rs_c = ln ? RS_c->data_ptr<T>() : nullptr;
  T* db_p = ptr<T>(db);
  TORCH_CHECK(db_p == nullptr || !ln, "rnnkit fused_cpu: db is summed in Python with layer norm");
  const int64_t grain = std::max<int64_t>(1, 8192 / G4);
  const int64_t chunk = unit_chunk(u);
  Scratch<T> r_scratch(brg ? B * u : 0);  // the recurrent product of the step
  StepProduct rec;  // its weight (WT: float32, or bfloat16 VNNI in a bfloat16 call)
  if (brg) rec = StepProduct(WT, G4, 1);
  // per thread: a row's gate activations, LN(c') for an activation that reads its input (with
  // layer norm), the gates' gamma gradient
  const bool ln_input = ln && needs_input(act);
  ThreadRows<T> y_rows(G4), tmp_rows(ln_input ? u : 0), dgh_rows(ln ? G4 : 0);
  // per thread, with layer norm: the cell LayerNorm's gamma and beta gradients (u each)
  ThreadRows<T> dgc_rows(ln ? 2 * u : 0);
  int64_t pending = steps;  // steps [t + 1, pending) are not in DWU yet
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* g_t = g_all + t * B * G4;
    const T* tc_t = tc_all + t * B * u;
    const T* dh_p = dh.data_ptr<T>();
    const T* c_prev = c_all + t * B * u;
    const T* craw_t = (CN.has_value() ? CN->data_ptr<T>() + t * B * u : c_all + (t + 1) * B * u);
    T* m_t = ln ? M->data_ptr<T>() + t * B * G4 : nullptr;
    // The gate gradients of row b for units [j0, j1) (layer norm: whole rows only); y: a
    // scratch row of 4u, tmp one of u (ln_input); dgh, dgc: this thread's share of the gates'
    // LayerNorm gamma gradient and of the cell LayerNorm's gamma and beta gradients.
    auto grads = [&](int64_t b, int64_t j0, int64_t j1, T* y, T* tmp, T* dgh, T* dgc) {
      const int64_t n = j1 - j0;
      T* g = g_t + b * G4;
      const T* tc = tc_t + b * u;
      T* dhn = dhn_all + b * u;
      T* dcb = dc_p + b * u;
      weight_grad(dh_p + b * u + j0, wa, t, b, n, dhn + j0, j0);
      T* d = dpc_all + b * u;  // d c' through the output (layer norm: of LN(c'))
      for (int64_t j = j0; j < j1; ++j) d[j] = dhn[j] * g[3 * u + j];  // times o
      const T* c_raw = craw_t + b * u;
      const T* xc = c_raw;  // the cell activation's input: c', or LN(c') recomputed into tmp
      if (ln_input) {
        const T mu = mu_c[t * B + b], rs = rs_c[t * B + b];
        for (int64_t j = 0; j < u; ++j) tmp[j] = (c_raw[j] - mu) * rs * gc[j] + bc[j];
        xc = tmp;
      }
      mul_deriv(act, tc + j0, xc + j0, d + j0, n);
      if (ln) {  // through the cell LayerNorm
        row_layer_norm_backward(d, c_raw, gc, mu_c[t * B + b], rs_c[t * B + b], u, dcb, dgc,
                                dgc + u, /*add=*/true);
      } else {
        for (int64_t j = j0; j < j1; ++j) dcb[j] += d[j];
      }
      for (int64_t k = 0; k < 4; ++k) {  // the gate activations, read by the derivatives
        std::copy(g + k * u + j0, g + k * u + j1, y + k * u + j0);
      }
      const T *i = y, *f = y + u, *gg = y + 2 * u, *o = y + 3 * u;
      const T* cp = c_prev + b * u;
      for (int64_t j = j0; j < j1; ++j) g[3 * u + j] = dhn[j] * tc[j];
      if (!masked || v_all[t * B + b]) {
        for (int64_t j = j0; j < j1; ++j) {
          const T dcj = dcb[j];
          g[j] = dcj * gg[j];
          g[u + j] = dcj * cp[j];
          g[2 * u + j] = dcj * i[j];
          dcb[j] = dcj * f[j];
        }
      } else {  // a masked step: no gate gradient; the carried c passes dc through
        for (int64_t k = 0; k < 3; ++k) std::fill(g + k * u + j0, g + k * u + j1, T(0));
      }
      // pre-activations: all four gates' (p), or the candidate's alone (pc)
      const T* p = p_all != nullptr && p_full ? p_all + (t * B + b) * G4 : nullptr;
      const T* pc = p != nullptr             ? p + 2 * u + j0
                    : p_all != nullptr       ? p_all + (t * B + b) * u + j0
                                             : nullptr;
      mul_deriv(ract, i + j0, p != nullptr ? p + j0 : p, g + j0, n);
      mul_deriv(ract, f + j0, p != nullptr ? p + u + j0 : p, g + u + j0, n);
      mul_deriv(act, gg + j0, pc, g + 2 * u + j0, n);
      mul_deriv(ract, o + j0, p != nullptr ? p + 3 * u + j0 : p, g + 3 * u + j0, n);
      if (db_p != nullptr) {  // unit split: this thread owns these columns of db
        for (int64_t k = 0; k < 4; ++k) {
          for (int64_t j = j0; j < j1; ++j) db_p[k * u + j] += g[k * u + j];
        }
      }
      if (ln) {  // through the gates' LayerNorm: M[t] becomes d(h_in U)
        T* mrow = m_t + b * G4;
        row_layer_norm_backward(g, mrow, gh, mu_h[t * B + b], rs_h[t * B + b], G4, mrow, dgh);
      }
    };
    for_backward_parts(ln, B, grain, u, chunk, [&](int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
      T* y = y_rows.mine();
      T* tmp = ln_input ? tmp_rows.mine() : nullptr;
      T* dgh = ln ? dgh_rows.mine() : nullptr;
      T* dgc = ln ? dgc_rows.mine() : nullptr;
      for (int64_t b = b0; b < b1; ++b) grads(b, j0, j1, y, tmp, dgh, dgc);
    });
    const at::Tensor src = ln ? (*M)[t] : G[t];  // the gradients entering h_in U
    if (t > 0 || h0_grad) {  // (h_0's gradient: only when asked for)
      previous_h_grad<T>(src, WT, onednn, rec, u, chunk, dY_all, t, rd_p, wa, dh_p, dhn_all,
                         r_scratch.data(), dh2.data_ptr<T>());
    }
    if (K > 0 && ((pending - t) * B >= chunk_rows || t == 0)) {  // a chunk, and the rest
      const int64_t n = (pending - t) * B;
      const T* rows_all = (ln ? *M : G).data_ptr<T>();
      const bool first = pending == steps;
      const T* x_p = nullptr;  // the chunk's input rows (bfloat16: widened to float32)
      if constexpr (std::is_same_v<T, float>) {
        if (xs_bf16) {
          widen_bf16(XS->data_ptr<at::BFloat16>() + t * B * I, n * I, x_wide.data());
          x_p = x_wide.data();
        }
      }
      if (I > 0 && !xs_bf16) {
        x_p = XS->data_ptr<T>() + t * B * I;
      }
      if (brg_grads) {
        transpose_rows<T>(nullptr, G4, x_p, I, HS->data_ptr<T>(), u, t * B, n, nullptr,
                          lt_buf.data_ptr<T>());
        if (bf16_grads) {
          brgemm_weight_grads_bf16<T>(*DWU, lt_buf.data_ptr<T>(), lt_b.data(), K,
                                      rows_all + t * B * G4, G4, n, /*add=*/!first, pack);
        } else {
          brgemm_weight_grads<T>(*DWU, lt_buf.data_ptr<T>(), K, rows_all + t * B * G4, G4, n,
                                 /*add=*/!first);
        }
      } else {
        transpose_rows<T>(rows_all, G4, x_p, I, HS->data_ptr<T>(), u, t * B, n,
                          st_buf.data_ptr<T>(), lt_buf.data_ptr<T>());
        add_weight_grads<T>(*DWU, lt_buf, st_buf, K, G4, n, first);
      }
      pending = t;
    }
    std::swap(dh, dh2);
  }
  if (ln) {
    dgh_rows.sum_into(dg_h->data_ptr<T>());
    std::vector<T> gb(2 * u, T(0));  // [dg_c | db_c]
    dgc_rows.sum_into(gb.data());
    T* dgc_p = dg_c->data_ptr<T>();
    T* dbc_p = db_c->data_ptr<T>();
    for (int64_t j = 0; j < u; ++j) {
      dgc_p[j] += gb[j];
      dbc_p[j] += gb[u + j];
    }
  }
  if (!dh.is_same(dh_in)) dh_in.copy_(dh);
}

void lstm_backward(const at::Tensor& G, const at::Tensor& WT, bool onednn, const at::Tensor& H,
                   const at::Tensor& C, const std::optional<at::Tensor>& CN, const at::Tensor& TC,
                   const at::Tensor& dY, const at::Tensor& dh, const at::Tensor& dc,
                   const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                   const std::optional<at::Tensor>& valid, int64_t act, int64_t ract,
                   const std::optional<at::Tensor>& M, const std::optional<at::Tensor>& MU_h,
                   const std::optional<at::Tensor>& RS_h, const std::optional<at::Tensor>& MU_c,
                   const std::optional<at::Tensor>& RS_c, const std::optional<at::Tensor>& g_h,
                   const std::optional<at::Tensor>& g_c, const std::optional<at::Tensor>& b_c,
                   const std::optional<at::Tensor>& dg_c, const std::optional<at::Tensor>& db_c,
                   const std::optional<at::Tensor>& dg_h,
                   const std::optional<at::Tensor>& db, const std::optional<at::Tensor>& P,
                   const std::optional<at::Tensor>& XS, const std::optional<at::Tensor>& HS,
                   const std::optional<at::Tensor>& DWU, bool h0_grad) {
  for (const auto* x : {&G, &H, &C, &TC, &dY, &dh, &dc}) check_contiguous(*x, "G/H/C/TC/dY/dh/dc");
  check_lstm_pre_activations(P, G, true, act, ract);
  if (g_h.has_value()) {  // layer norm: the LayerNorms' gradient accumulators
    const int64_t u = G.size(2) / 4;
    TORCH_CHECK(dg_h.has_value() && dg_c.has_value() && db_c.has_value() &&
                    dg_h->is_contiguous() && dg_h->numel() == 4 * u &&
                    dg_c->is_contiguous() && dg_c->numel() == u && db_c->is_contiguous() &&
                    db_c->numel() == u,
                "rnnkit fused_cpu: layer norm needs contiguous dg_h (4u), dg_c and db_c (u)");
  }
  if (DWU.has_value()) {  // the weight gradients, summed here (add_weight_grads)
    const int64_t TB = G.size(0) * G.size(1), u = G.size(2) / 4;
    const int64_t I = XS.has_value() ? XS->size(1) : 0;
    TORCH_CHECK(HS.has_value() && HS->is_contiguous() && DWU->is_contiguous() &&
                    (!XS.has_value() || XS->is_contiguous()),
                "rnnkit fused_cpu: DWU needs contiguous HS (and XS)");
    TORCH_CHECK(DWU->sizes() == at::IntArrayRef({I + u, G.size(2)}) && HS->numel() == TB * u &&
                    (I == 0 || XS->size(0) == TB),
                "rnnkit fused_cpu: DWU (I + u, 4u), HS (T, B, u), XS (T B, I)");
    TORCH_CHECK(I == 0 || XS->scalar_type() == G.scalar_type() ||
                    (XS->scalar_type() == at::kBFloat16 && G.scalar_type() == at::kFloat),
                "rnnkit fused_cpu: XS in G's dtype or bfloat16; received ", XS->scalar_type());
  }
  if (rd.has_value()) check_contiguous(*rd, "rd");
  if (a.has_value()) check_contiguous(*a, "a");
  if (valid.has_value()) check_contiguous(*valid, "valid");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_lstm_backward", [&] {
    lstm_backward_impl<scalar_t>(G, WT, onednn, H, C, CN, TC, dY, dh, dc, rd, a, valid, act, ract,
                                 M, MU_h, RS_h, MU_c, RS_c, g_h, g_c, b_c, dg_c, db_c, dg_h, db, P,
                                 XS, HS, DWU, h0_grad);
  });
}

// ---------------------------------------------------------------------------------------- GRU
// GRU with reset_after (Keras' default, torch.nn.GRU's form): fused.py's _GRUFunction. G (T, B, 3u)
// columns h, z, r (pre-activations in; activations h~, z, r out); R (n, B, 3u) columns z, r, h:
// the recurrent projection h_in U (+ recurrent bias, or LayerNorm with the bias as its beta).
template <typename T>
void gru_forward_impl(const at::Tensor& G, const at::Tensor& W, bool onednn, const at::Tensor& H,
                      const at::Tensor& R, const std::optional<at::Tensor>& b_rec,
                      const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                      const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& valid,
                      int64_t act, int64_t ract, int64_t mode, bool save,
                      const std::optional<at::Tensor>& M, const std::optional<at::Tensor>& MU,
                      const std::optional<at::Tensor>& RS, const std::optional<at::Tensor>& g_h,
                      const std::optional<at::Tensor>& P, double eps) {
  const int64_t steps = G.size(0), B = G.size(1), G3 = G.size(2), u = G3 / 3;
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  T* p_all = save ? ptr<T>(P) : nullptr;  // the gates' pre-activations (SiLU, GELU)
  T* h_all = H.data_ptr<T>();
  T* r_all = R.data_ptr<T>();
  const T* bias = (!ln && b_rec.has_value()) ? b_rec->data_ptr<T>() : nullptr;
  const bool* v_all = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  const Weight<T> wa(a);
  Scratch<T> hbuf(mode != 0 ? B * u : 0);
  const int64_t grain = std::max<int64_t>(1, 8192 / G3);
  const bool brg = use_brgemm<T>(onednn);
  const at::Tensor m_scratch = brg && ln && !save ? at::empty({B, G3}, G.options()) : at::Tensor();
  StepProduct rec;  // W for brgemm (float32, or bfloat16 VNNI in a bfloat16 call)
  if (brg) rec = StepProduct(W, u, 3);
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hin = recurrent_input(H, t, Hin, rd, s);
    // the recurrent product: with brgemm straight into R[s] (no LN) or into M[s] / a scratch
    at::Tensor m = brg ? (!ln ? R[s] : save ? (*M)[s] : m_scratch) : matmul(hin, W, onednn);
    if constexpr (std::is_same_v<T, float>) {
      if (brg) rec.all(hin.data_ptr<float>(), B, m.data_ptr<float>(), G3, /*add=*/false);
    }
    if (ln) {
      if (save && !brg) (*M)[s].copy_(m);
      auto y = at::native_layer_norm(m, {G3}, g_h, b_rec, eps);
      (*MU)[s].copy_(std::get<1>(y));
      (*RS)[s].copy_(std::get<2>(y));
      m = std::get<0>(y);
    }
    const T* m_all = m.data_ptr<T>();
    T* g_t = g_all + t * B * G3;
    T* r_t = r_all + s * B * G3;
    const T* h_prev = h_all + t * B * u;
    T* h_next = h_all + (t + 1) * B * u;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        T* rr = r_t + b * G3;
        const T* mm = m_all + b * G3;  // rr itself where brgemm wrote R[s]
        if (bias != nullptr) {
          for (int64_t k = 0; k < G3; ++k) rr[k] = mm[k] + bias[k];
        } else if (mm != rr) {
          std::copy(mm, mm + G3, rr);
        }
        for (int64_t k = 0; k < 2 * u; ++k) g[u + k] += rr[k];
        T* p = p_all != nullptr ? p_all + (t * B + b) * G3 : nullptr;
        if (p != nullptr) std::copy(g + u, g + G3, p + u);
        act_inplace(ract, g + u, 2 * u);
        const T *z = g + u, *r = g + 2 * u, *rh = rr + 2 * u;
        for (int64_t j = 0; j < u; ++j) g[j] += r[j] * rh[j];
        if (p != nullptr) std::copy(g, g + u, p);
        act_inplace(act, g, u);
        const T* hp = h_prev + b * u;
        T* hn = mode == 0 ? h_next + b * u : hbuf.data() + b * u;
        for (int64_t j = 0; j < u; ++j) hn[j] = g[j] + z[j] * (hp[j] - g[j]);
        const bool ok = mode == 1 ? v_all[t * B + b] : true;
        set_h(mode, ok, hn, hp, wa, t, b, u, h_next + b * u);
      }
    });
  }
}

void gru_forward(const at::Tensor& G, const at::Tensor& W, bool onednn, const at::Tensor& H,
                 const at::Tensor& R, const std::optional<at::Tensor>& b_rec,
                 const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                 const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& valid,
                 int64_t act, int64_t ract, int64_t mode, bool save,
                 const std::optional<at::Tensor>& M, const std::optional<at::Tensor>& MU,
                 const std::optional<at::Tensor>& RS, const std::optional<at::Tensor>& g_h,
                 const std::optional<at::Tensor>& P, double eps) {
  for (const auto* x : {&G, &H, &R}) check_contiguous(*x, "G/H/R");
  check_pre_activations(P, G, save, act, ract);
  check_step_weight(W, G, 3, onednn);
  if (a.has_value()) check_contiguous(*a, "a");
  if (valid.has_value()) check_contiguous(*valid, "valid");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_gru_forward", [&] {
    gru_forward_impl<scalar_t>(G, W, onednn, H, R, b_rec, Hin, rd, a, valid, act, ract, mode, save,
                               M, MU, RS, g_h, P, eps);
  });
}

// On return G holds the gradients of the input projection (columns h, z, r), R those of the
// recurrent projection's output (z, r, h; the LayerNorm's output with layer norm, whose input
// gradients go to DM), dh the gradient of h_0 (only with h0_grad, as the LSTM's).
template <typename T>
void gru_backward_impl(const at::Tensor& G, const at::Tensor& WT, bool onednn, const at::Tensor& H,
                       const at::Tensor& R, const at::Tensor& dY, const at::Tensor& dh_in,
                       const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                       int64_t act, int64_t ract, const std::optional<at::Tensor>& M,
                       const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                       const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& b_rec,
                       const std::optional<at::Tensor>& DM, const std::optional<at::Tensor>& P,
                       const std::optional<at::Tensor>& dg_h, bool h0_grad) {
  const int64_t steps = G.size(0), B = G.size(1), G3 = G.size(2), u = G3 / 3;
  const T* p_all = ptr<T>(P);
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  T* r_all = R.data_ptr<T>();
  const T* h_all = H.data_ptr<T>();
  const T* dY_all = dY.data_ptr<T>();
  const T* rd_p = ptr<T>(rd);
  const Weight<T> wa(a);
  at::Tensor dh = dh_in;
  at::Tensor dh2 = at::empty_like(dh);
  const int64_t grain = std::max<int64_t>(1, 8192 / G3);
  Scratch<T> rec_scratch(B * u);  // d h_in of the step: the recurrent product
  StepProduct rec;  // WT for brgemm
  if (use_brgemm<T>(onednn)) rec = StepProduct(WT, G3, 1);
  ThreadRows<T> y_rows(G3), dhn_rows(u);  // per thread: a row's activations, a dh
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* g_t = g_all + t * B * G3;
    T* r_t = r_all + t * B * G3;
    const T* dh_p = dh.data_ptr<T>();
    T* dh2_p = dh2.data_ptr<T>();
    const T* dHt = t > 0 ? dY_all + (t - 1) * B * u : nullptr;  // H[0] is no output
    const T* h_prev = h_all + t * B * u;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      T *y = y_rows.mine(), *dhn = dhn_rows.mine();
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        T* rr = r_t + b * G3;
        std::copy(g, g + G3, y);
        const T *hh = y, *z = hh + u, *r = hh + 2 * u;
        const T* dhb = dh_p + b * u;
        weight_grad(dhb, wa, t, b, u, dhn);
        const T* hp = h_prev + b * u;
        T* out = dh2_p + b * u;
        if (dHt != nullptr) {
          std::copy(dHt + b * u, dHt + (b + 1) * u, out);
        } else {
          std::fill(out, out + u, T(0));
        }
        for (int64_t j = 0; j < u; ++j) {
          out[j] += z[j] * dhn[j];  // through h' = h~ + z (h_{t-1} - h~)
          if (wa.p != nullptr) out[j] += dhb[j] - dhn[j];  // where h_{t-1} is kept
          g[j] = (T(1) - z[j]) * dhn[j];  // d h~
          g[u + j] = (hp[j] - hh[j]) * dhn[j];  // d z
        }
        const T* p = p_all != nullptr ? p_all + (t * B + b) * G3 : nullptr;  // pre-activations
        mul_deriv(act, hh, p, g, u);                                  // d pre_h
        mul_deriv(ract, z, p != nullptr ? p + u : p, g + u, u);       // d pre_z
        for (int64_t j = 0; j < u; ++j) {
          g[2 * u + j] = g[j] * rr[2 * u + j];  // d r (pre-activation below)
          rr[2 * u + j] = g[j] * r[j];           // d of the recurrent h column
          rr[j] = g[u + j];                      // d z column
        }
        mul_deriv(ract, r, p != nullptr ? p + 2 * u : p, g + 2 * u, u);
        std::copy(g + 2 * u, g + 3 * u, rr + u);  // d r column
      }
    });
    at::Tensor src = R[t];
    if (ln) {
      auto res = at::native_layer_norm_backward(R[t], (*M)[t], {G3}, (*MU)[t], (*RS)[t], g_h, b_rec,
                                                {true, dg_h.has_value(), false});
      if (dg_h.has_value()) dg_h->add_(std::get<1>(res));
      (*DM)[t].copy_(std::get<0>(res));  // DM may be M itself: M[t] is not read again
      src = (*DM)[t];
    }
    if (t > 0 || h0_grad) {  // (h_0's gradient: only when asked for)
      product_into<T>(src, WT, onednn, rec, rec_scratch.data(), u, /*add=*/false);
      add_through_dropout(dh2_p, rec_scratch.data(), rd_p, B, u, grain);
    }
    std::swap(dh, dh2);
  }
  if (!dh.is_same(dh_in)) dh_in.copy_(dh);
}

void gru_backward(const at::Tensor& G, const at::Tensor& WT, bool onednn, const at::Tensor& H,
                  const at::Tensor& R, const at::Tensor& dY, const at::Tensor& dh,
                  const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                  int64_t act, int64_t ract, const std::optional<at::Tensor>& M,
                  const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                  const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& b_rec,
                  const std::optional<at::Tensor>& DM, const std::optional<at::Tensor>& P,
                  const std::optional<at::Tensor>& dg_h, bool h0_grad) {
  for (const auto* x : {&G, &H, &R, &dY, &dh}) check_contiguous(*x, "G/H/R/dY/dh");
  check_pre_activations(P, G, true, act, ract);
  if (rd.has_value()) check_contiguous(*rd, "rd");
  if (a.has_value()) check_contiguous(*a, "a");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_gru_backward", [&] {
    gru_backward_impl<scalar_t>(G, WT, onednn, H, R, dY, dh, rd, a, act, ract, M, MU, RS, g_h,
                                b_rec, DM, P, dg_h, h0_grad);
  });
}

// ------------------------------------------------------------------- GRU, reset_after=False
// fused.py's _GRUResetBeforeFunction: the reset gate scales h_in before the candidate's product,
// so a step has two products, h_in U_zr (columns z, r) and (r h_in) U_h. G (T, B, 3u) columns
// h, z, r: pre-activations in, activations h~, z, r out of the forward; the gradients of the
// pre-activations out of the backward. RH (n, B, u): r h_in. Layer norm: Mzr (n, B, 2u) and
// Mh (n, B, u) keep the products, MU/RS (n, 2, B, 1) their statistics ([zr, h]), gamma g_h (3u)
// in Keras' order (z, r | h).

template <typename T>
void gru_rb_forward_impl(const at::Tensor& G, const at::Tensor& Wzr, const at::Tensor& Wh,
                         bool onednn, const at::Tensor& H, const at::Tensor& RH,
                         const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                         const std::optional<at::Tensor>& a,
                         const std::optional<at::Tensor>& valid, int64_t act, int64_t ract,
                         int64_t mode, bool save, const std::optional<at::Tensor>& Mzr,
                         const std::optional<at::Tensor>& Mh, const std::optional<at::Tensor>& MU,
                         const std::optional<at::Tensor>& RS, const std::optional<at::Tensor>& g_h,
                         const std::optional<at::Tensor>& P, double eps) {
  const int64_t steps = G.size(0), B = G.size(1), G3 = G.size(2), u = G3 / 3;
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  T* h_all = H.data_ptr<T>();
  T* p_all = save ? ptr<T>(P) : nullptr;  // the gates' pre-activations (SiLU, GELU)
  const bool* v_all = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  const Weight<T> wa(a);
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  Scratch<T> hbuf(mode != 0 ? B * u : 0);
  // the products: straight into the gate columns, or (layer norm) into Mzr / Mh or scratch
  Scratch<T> mzr_scratch(ln && !save ? B * 2 * u : 0), mh_scratch(ln && !save ? B * u : 0);
  const int64_t grain = std::max<int64_t>(1, 8192 / G3);
  StepProduct rec_zr, rec_h;  // Wzr and Wh for brgemm
  if (use_brgemm<T>(onednn)) {
    rec_zr = StepProduct(Wzr, u, 1);
    rec_h = StepProduct(Wh, u, 1);
  }
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hin = recurrent_input(H, t, Hin, rd, s);
    const T* hin_p = hin.data_ptr<T>();
    T* g_t = g_all + t * B * G3;
    T* rh_t = RH.data_ptr<T>() + s * B * u;
    T* mzr = ln ? (save ? Mzr->data_ptr<T>() + s * B * 2 * u : mzr_scratch.data()) : nullptr;
    T* mh = ln ? (save ? Mh->data_ptr<T>() + s * B * u : mh_scratch.data()) : nullptr;
    T* mu = ln ? MU->data_ptr<T>() + s * 2 * B : nullptr;
    T* rs = ln ? RS->data_ptr<T>() + s * 2 * B : nullptr;
    if (ln) {
      product_into<T>(hin, Wzr, onednn, rec_zr, mzr, 2 * u, /*add=*/false);
    } else {
      product_into<T>(hin, Wzr, onednn, rec_zr, g_t + u, G3, /*add=*/true);
    }
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        if (ln) {  // g[z, r] += LN(h_in U_zr; gamma[:2u])
          const T* m = mzr + b * 2 * u;
          T mean, rstd;
          row_moments(m, 2 * u, eps, mean, rstd);
          mu[b] = mean;
          rs[b] = rstd;
          for (int64_t k = 0; k < 2 * u; ++k) g[u + k] += (m[k] - mean) * rstd * gh[k];
        }
        if (p_all != nullptr) std::copy(g + u, g + G3, p_all + (t * B + b) * G3 + u);
        act_inplace(ract, g + u, 2 * u);
        const T *r = g + 2 * u, *hi = hin_p + b * u;
        T* rh = rh_t + b * u;
        for (int64_t j = 0; j < u; ++j) rh[j] = r[j] * hi[j];
      }
    });
    const at::Tensor rh_s = RH[s];
    if (ln) {
      product_into<T>(rh_s, Wh, onednn, rec_h, mh, u, /*add=*/false);
    } else {
      product_into<T>(rh_s, Wh, onednn, rec_h, g_t, G3, /*add=*/true);
    }
    const T* h_prev = h_all + t * B * u;
    T* h_next = h_all + (t + 1) * B * u;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        if (ln) {  // g[h] += LN((r h_in) U_h; gamma[2u:])
          const T* m = mh + b * u;
          T mean, rstd;
          row_moments(m, u, eps, mean, rstd);
          mu[B + b] = mean;
          rs[B + b] = rstd;
          for (int64_t j = 0; j < u; ++j) g[j] += (m[j] - mean) * rstd * gh[2 * u + j];
        }
        if (p_all != nullptr) std::copy(g, g + u, p_all + (t * B + b) * G3);
        act_inplace(act, g, u);
        const T *z = g + u, *hp = h_prev + b * u;
        T* hn = mode == 0 ? h_next + b * u : hbuf.data() + b * u;
        for (int64_t j = 0; j < u; ++j) hn[j] = g[j] + z[j] * (hp[j] - g[j]);
        const bool ok = mode == 1 ? v_all[t * B + b] : true;
        set_h(mode, ok, hn, hp, wa, t, b, u, h_next + b * u);
      }
    });
  }
}

void gru_rb_forward(const at::Tensor& G, const at::Tensor& Wzr, const at::Tensor& Wh, bool onednn,
                    const at::Tensor& H, const at::Tensor& RH, const std::optional<at::Tensor>& Hin,
                    const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                    const std::optional<at::Tensor>& valid, int64_t act, int64_t ract,
                    int64_t mode, bool save, const std::optional<at::Tensor>& Mzr,
                    const std::optional<at::Tensor>& Mh, const std::optional<at::Tensor>& MU,
                    const std::optional<at::Tensor>& RS, const std::optional<at::Tensor>& g_h,
                    const std::optional<at::Tensor>& P, double eps) {
  for (const auto* x : {&G, &H, &RH}) check_contiguous(*x, "G/H/RH");
  TORCH_CHECK(!g_h.has_value() || (MU.has_value() && RS.has_value() &&
                                   (!save || (Mzr.has_value() && Mh.has_value()))),
              "rnnkit fused_cpu: a layer-norm GRU needs MU, RS (and Mzr, Mh when saving)");
  check_pre_activations(P, G, save, act, ract);
  if (a.has_value()) check_contiguous(*a, "a");
  if (valid.has_value()) check_contiguous(*valid, "valid");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_gru_rb_forward", [&] {
    gru_rb_forward_impl<scalar_t>(G, Wzr, Wh, onednn, H, RH, Hin, rd, a, valid, act, ract, mode,
                                  save, Mzr, Mh, MU, RS, g_h, P, eps);
  });
}

// On return G holds the gradients of the pre-activations (h, z, r: the input projection's),
// DMzr/DMh those of the products (before their LayerNorms, with layer norm), dh the gradient of
// h_0 (only with h0_grad; WhT is read at every step, for the reset gate's gradient);
// dg_h accumulates the LayerNorms' gamma gradient (Keras' order z, r | h).
template <typename T>
void gru_rb_backward_impl(const at::Tensor& G, const at::Tensor& WzrT, const at::Tensor& WhT,
                          bool onednn, const at::Tensor& H, const at::Tensor& RH,
                          const at::Tensor& dY, const at::Tensor& dh_in,
                          const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                          const std::optional<at::Tensor>& a, int64_t act, int64_t ract,
                          const std::optional<at::Tensor>& Mzr, const std::optional<at::Tensor>& Mh,
                          const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                          const std::optional<at::Tensor>& g_h,
                          const at::Tensor& DMzr, const at::Tensor& DMh,
                          const std::optional<at::Tensor>& dg_h,
                          const std::optional<at::Tensor>& P, bool h0_grad) {
  const int64_t steps = G.size(0), B = G.size(1), G3 = G.size(2), u = G3 / 3;
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  const T* h_all = H.data_ptr<T>();
  const T* dY_all = dY.data_ptr<T>();
  const T* rd_p = ptr<T>(rd);
  const T* p_all = ptr<T>(P);
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  const Weight<T> wa(a);
  at::Tensor dh = dh_in;
  at::Tensor dh2 = at::empty_like(dh);
  // d(r h_in), d h_in of the step
  at::Tensor drh_t = at::empty({B, u}, G.options());
  at::Tensor dhin_t = at::empty({B, u}, G.options());
  T* drh = drh_t.data_ptr<T>();
  T* dhin = dhin_t.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 8192 / G3);
  ThreadRows<T> y_rows(G3), tmp_rows(ln ? 2 * u : 0), dgh_rows(ln ? G3 : 0);
  StepProduct rec_zr, rec_h;  // WzrT and WhT for brgemm
  if (use_brgemm<T>(onednn)) {
    rec_zr = StepProduct(WzrT, 2 * u, 1);
    rec_h = StepProduct(WhT, u, 1);
  }
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* g_t = g_all + t * B * G3;
    const T* dh_p = dh.data_ptr<T>();
    const T* h_prev = h_all + t * B * u;
    const T* hin_p = Hin.has_value() ? Hin->data_ptr<T>() + t * B * u : h_prev;
    const T* mu = ln ? MU->data_ptr<T>() + t * 2 * B : nullptr;
    const T* rs = ln ? RS->data_ptr<T>() + t * 2 * B : nullptr;
    T* dh2_p = dh2.data_ptr<T>();
    const T* dHt = t > 0 ? dY_all + (t - 1) * B * u : nullptr;  // H[0] is no output
    // the products' output gradients, contiguous (the operands of this step's products and of
    // the weight gradients): d pre_h / d pre_{z, r}, through the LayerNorms with layer norm
    at::Tensor src_h = DMh[t];
    at::Tensor src_zr = DMzr[t];
    T* sh = src_h.data_ptr<T>();
    T* szr = src_zr.data_ptr<T>();
    // d pre_h, d pre_z; dh2 = dY[t-1] + (z a + 1 - a) dh (the paths that skip the products)
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      T* y = y_rows.mine();
      T* tmp = ln ? tmp_rows.mine() : nullptr;
      T* dgh = ln ? dgh_rows.mine() : nullptr;
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        std::copy(g, g + 2 * u, y);  // activations h~, z (r stays in g for the next pass)
        const T *hh = y, *z = y + u, *hp = h_prev + b * u, *dhb = dh_p + b * u;
        const T* p = p_all != nullptr ? p_all + (t * B + b) * G3 : nullptr;
        T* dhn = tmp != nullptr ? tmp : dh2_p + b * u;  // scratch for a dh (overwritten below)
        weight_grad(dhb, wa, t, b, u, dhn);
        for (int64_t j = 0; j < u; ++j) {
          g[j] = (T(1) - z[j]) * dhn[j];
          g[u + j] = (hp[j] - hh[j]) * dhn[j];
        }
        mul_deriv(act, hh, p, g, u);
        mul_deriv(ract, z, p != nullptr ? p + u : p, g + u, u);
        T* out = dh2_p + b * u;
        for (int64_t j = 0; j < u; ++j) {
          const T keep = dhb[j] - dhn[j];  // (1 - a) dh
          out[j] = (dHt != nullptr ? dHt[b * u + j] : T(0)) + keep + z[j] * dhn[j];
        }
        T* shb = sh + b * u;
        if (ln) {
          row_layer_norm_backward(g, Mh->data_ptr<T>() + (t * B + b) * u, gh + 2 * u, mu[B + b],
                                  rs[B + b], u, shb, dgh + 2 * u);
        } else {
          std::copy(g, g + u, shb);
        }
      }
    });
    product_into<T>(src_h, WhT, onednn, rec_h, drh, u, /*add=*/false);  // d(r h_in)
    // d pre_r; d h_in = d(r h_in) r, then + d pre_zr U_zr^T
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      T* dgh = ln ? dgh_rows.mine() : nullptr;
      for (int64_t b = b0; b < b1; ++b) {
        T* g = g_t + b * G3;
        const T* p = p_all != nullptr ? p_all + (t * B + b) * G3 : nullptr;
        T* r = g + 2 * u;  // the activation r, overwritten by its gradient
        const T *d = drh + b * u, *hi = hin_p + b * u;
        T* di = dhin + b * u;
        T* rr = y_rows.mine();
        std::copy(r, r + u, rr);
        for (int64_t j = 0; j < u; ++j) {
          di[j] = d[j] * rr[j];
          r[j] = d[j] * hi[j];
        }
        mul_deriv(ract, rr, p != nullptr ? p + 2 * u : p, r, u);
        T* szb = szr + b * 2 * u;
        if (ln) {
          row_layer_norm_backward(g + u, Mzr->data_ptr<T>() + (t * B + b) * 2 * u, gh, mu[b],
                                  rs[b], 2 * u, szb, dgh);
        } else {
          std::copy(g + u, g + G3, szb);
        }
      }
    });
    if (t > 0 || h0_grad) {  // (h_0's gradient: only when asked for)
      product_into<T>(src_zr, WzrT, onednn, rec_zr, dhin, u, /*add=*/true);
      add_through_dropout(dh2_p, dhin, rd_p, B, u, grain);
    }
    std::swap(dh, dh2);
  }
  if (ln) dgh_rows.sum_into(dg_h->data_ptr<T>());
  if (!dh.is_same(dh_in)) dh_in.copy_(dh);
}

void gru_rb_backward(const at::Tensor& G, const at::Tensor& WzrT, const at::Tensor& WhT,
                     bool onednn, const at::Tensor& H, const at::Tensor& RH, const at::Tensor& dY,
                     const at::Tensor& dh, const std::optional<at::Tensor>& Hin,
                     const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                     int64_t act, int64_t ract, const std::optional<at::Tensor>& Mzr,
                     const std::optional<at::Tensor>& Mh, const std::optional<at::Tensor>& MU,
                     const std::optional<at::Tensor>& RS, const std::optional<at::Tensor>& g_h,
                     const at::Tensor& DMzr, const at::Tensor& DMh,
                     const std::optional<at::Tensor>& dg_h, const std::optional<at::Tensor>& P,
                     bool h0_grad) {
  for (const auto* x : {&G, &H, &RH, &dY, &dh}) check_contiguous(*x, "G/H/RH/dY/dh");
  if (rd.has_value()) check_contiguous(*rd, "rd");
  if (a.has_value()) check_contiguous(*a, "a");
  if (Hin.has_value()) check_contiguous(*Hin, "Hin");
  check_contiguous(DMzr, "DMzr");
  check_contiguous(DMh, "DMh");
  TORCH_CHECK(!g_h.has_value() || (Mzr.has_value() && Mh.has_value() && dg_h.has_value()),
              "rnnkit fused_cpu: a layer-norm GRU backward needs Mzr, Mh and dg_h");
  check_pre_activations(P, G, true, act, ract);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_gru_rb_backward", [&] {
    gru_rb_backward_impl<scalar_t>(G, WzrT, WhT, onednn, H, RH, dY, dh, Hin, rd, a, act, ract,
                                   Mzr, Mh, MU, RS, g_h, DMzr, DMh, dg_h, P, h0_grad);
  });
}

// -------------------------------------------------------------------------------- SimpleRNN
// SimpleRNN. G (T, B, u): the input projections in; with mode 0 (h_t = h') the forward writes
// the activations to H and G keeps the pre-activations, otherwise G becomes the activations h'
// and H the states. The backward turns G into the gradients of the pre-activations (and M into
// those of h_in U, with layer norm), dh into the gradient of h_0 (only with h0_grad, as the
// LSTM's); dg_h accumulates the LayerNorm's gamma gradient.
template <typename T>
void simple_forward_impl(const at::Tensor& G, const at::Tensor& W, bool onednn,
                         const at::Tensor& H, const std::optional<at::Tensor>& Hin,
                         const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                         const std::optional<at::Tensor>& valid, int64_t act, int64_t mode,
                         bool save, const std::optional<at::Tensor>& M,
                         const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                         const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& P,
                         double eps) {
  const int64_t steps = G.size(0), B = G.size(1), u = G.size(2);
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  // the pre-activations (SiLU, GELU) where G becomes h' (mode 0 keeps them in G)
  T* p_all = save && mode != 0 ? ptr<T>(P) : nullptr;
  T* h_all = H.data_ptr<T>();
  const bool* v_all = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  const Weight<T> wa(a);
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 8192 / u);
  const int64_t chunk = unit_chunk(u);
  const bool brg = use_brgemm<T>(onednn);
  Scratch<T> m_scratch(brg && ln && !save ? B * u : 0);
  // brgemm's product into a row-padded scratch, added in the row pass, as the LSTM's (paired,
  // 32 x 100, 256 units, 1 thread: inference 1.07x, training 1.03x; the GRU's 3u rows: 0.98x)
  const int64_t ld_r = u + kRowPad;
  Scratch<T> r_scratch(brg && !ln ? B * ld_r : 0);
  StepProduct rec;  // W for brgemm (float32, or bfloat16 VNNI in a bfloat16 call)
  if (brg) rec = StepProduct(W, u, 1);
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hin = recurrent_input(H, t, Hin, rd, s);
    T* g_t = g_all + t * B * u;
    const T* h_prev = h_all + t * B * u;
    T* h_next = h_all + (t + 1) * B * u;
    auto finish = [&](int64_t b, int64_t j0, int64_t j1) {  // h' and h_t, units [j0, j1)
      T* g = g_t + b * u;
      const int64_t n = j1 - j0, o = b * u + j0;
      if (mode == 0) {
        act_out(act, g + j0, h_next + o, n);
      } else {
        if (p_all != nullptr) std::copy(g + j0, g + j1, p_all + t * B * u + o);
        act_inplace(act, g + j0, n);
        const bool ok = mode == 1 ? v_all[t * B + b] : true;
        set_h(mode, ok, g + j0, h_prev + o, wa, t, b, n, h_next + o, j0);
      }
    };
    if (ln) {  // g += LN(h_in U) with gamma g_h, no beta: whole rows
      at::Tensor m;
      const T* m_all = nullptr;
      if constexpr (std::is_same_v<T, float>) {
        if (brg) {
          float* dst = save ? M->data_ptr<float>() + s * B * u : m_scratch.data();
          rec.all(hin.data_ptr<float>(), B, dst, u, /*add=*/false);
          m_all = dst;
        }
      }
      if (!brg) {
        m = matmul(hin, W, onednn);
        m_all = m.data_ptr<T>();
      }
      T* m_keep = save ? M->data_ptr<T>() + s * B * u : nullptr;
      T* mu_p = MU->data_ptr<T>() + s * B;
      T* rs_p = RS->data_ptr<T>() + s * B;
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* mm = m_all + b * u;
          T mu, rs;
          row_moments(mm, u, eps, mu, rs);
          if (m_keep != nullptr && mm != m_keep + b * u) std::copy(mm, mm + u, m_keep + b * u);
          mu_p[b] = mu;
          rs_p[b] = rs;
          T* g = g_t + b * u;
          for (int64_t j = 0; j < u; ++j) g[j] += (mm[j] - mu) * rs * gh[j];
          finish(b, 0, u);
        }
      });
      continue;
    }
    at::Tensor m;
    if (!brg) m = matmul(hin, W, onednn);
    const T* m_all = brg ? r_scratch.data() : m.data_ptr<T>();
    const int64_t ld_m = brg ? ld_r : u;
    const T* x_p = hin.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      if (brg) rec.load(x_p, B, u);
    }
    for_unit_parts(u, chunk, [&](int64_t j0, int64_t j1) {
      if constexpr (std::is_same_v<T, float>) {
        if (brg) rec.block(B, 0, j0, j1 - j0, x_p, u, r_scratch.data() + j0, ld_r, /*add=*/false);
      }
      for (int64_t b = 0; b < B; ++b) {
        T* g = g_t + b * u;
        const T* mm = m_all + b * ld_m;
        for (int64_t j = j0; j < j1; ++j) g[j] += mm[j];
        finish(b, j0, j1);
      }
    });
  }
}

void simple_forward(const at::Tensor& G, const at::Tensor& W, bool onednn, const at::Tensor& H,
                    const std::optional<at::Tensor>& Hin, const std::optional<at::Tensor>& rd,
                    const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& valid,
                    int64_t act, int64_t mode, bool save, const std::optional<at::Tensor>& M,
                    const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                    const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& P,
                    double eps) {
  for (const auto* x : {&G, &H}) check_contiguous(*x, "G/H");
  check_pre_activations(P, G, save && mode != 0, act, act);
  TORCH_CHECK(!g_h.has_value() || (MU.has_value() && RS.has_value()),
              "rnnkit fused_cpu: a layer-norm SimpleRNN needs MU and RS");
  if (a.has_value()) check_contiguous(*a, "a");
  if (valid.has_value()) check_contiguous(*valid, "valid");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_simple_forward", [&] {
    simple_forward_impl<scalar_t>(G, W, onednn, H, Hin, rd, a, valid, act, mode, save, M, MU, RS,
                                  g_h, P, eps);
  });
}

template <typename T>
void simple_backward_impl(const at::Tensor& G, const at::Tensor& WT, bool onednn,
                          const at::Tensor& H, const at::Tensor& dY, const at::Tensor& dh_in,
                          const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                          int64_t act, bool direct, const std::optional<at::Tensor>& M,
                          const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                          const std::optional<at::Tensor>& g_h,
                          const std::optional<at::Tensor>& dg_h,
                          const std::optional<at::Tensor>& P, bool h0_grad) {
  const int64_t steps = G.size(0), B = G.size(1), u = G.size(2);
  const T* p_all = direct ? nullptr : ptr<T>(P);
  const bool ln = g_h.has_value();
  T* g_all = G.data_ptr<T>();
  const T* h_all = H.data_ptr<T>();
  const T* dY_all = dY.data_ptr<T>();
  const T* rd_p = ptr<T>(rd);
  const Weight<T> wa(a);
  at::Tensor dh = dh_in;
  at::Tensor dh2 = at::empty_like(dh);
  at::Tensor dhn_t = at::empty_like(dh);  // the gradient of the new h'
  T* dhn_all = dhn_t.data_ptr<T>();
  const T* gh = ln ? g_h->data_ptr<T>() : nullptr;
  const T* mu_all = ln ? MU->data_ptr<T>() : nullptr;
  const T* rs_all = ln ? RS->data_ptr<T>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 8192 / u);
  const int64_t chunk = unit_chunk(u);
  const bool brg = use_brgemm<T>(onednn);
  Scratch<T> r_scratch(brg ? B * u : 0);
  StepProduct rec;  // WT for brgemm
  if (brg) rec = StepProduct(WT, u, 1);
  // per thread: a scratch row, the pre-activations of a row (SiLU, GELU), the gamma gradient
  ThreadRows<T> tmp_rows(u), x_rows(needs_input(act) ? u : 0), dgh_rows(ln ? u : 0);
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* g_t = g_all + t * B * u;
    const T* y_t = direct ? h_all + (t + 1) * B * u : g_t;  // the activations h'
    const T* dh_p = dh.data_ptr<T>();
    T* m_t = ln ? M->data_ptr<T>() + t * B * u : nullptr;
    // d pre-activation = a dh f'(h') for row b, units [j0, j1) (layer norm: whole rows, then
    // through the LayerNorm into M[t]); tmp: a scratch row of u
    auto grads = [&](int64_t b, int64_t j0, int64_t j1, T* tmp, T* xrow, T* dgh) {
      const int64_t n = j1 - j0, o = b * u;
      T* g = g_t + o;
      T* dhn = dhn_all + o;
      weight_grad(dh_p + o + j0, wa, t, b, n, dhn + j0, j0);
      const T* y = y_t + o;
      if (!direct) {  // G holds h' itself: keep it while G becomes the gradient
        std::copy(y + j0, y + j1, tmp + j0);
        y = tmp;
      }
      const T* x = nullptr;  // the pre-activations: P's row, or G's (direct) kept in xrow
      if (needs_input(act)) {
        if (direct) std::copy(g + j0, g + j1, xrow + j0);
        x = direct ? xrow : p_all + t * B * u + o;
      }
      std::copy(dhn + j0, dhn + j1, g + j0);
      mul_deriv(act, y + j0, x != nullptr ? x + j0 : x, g + j0, n);
      if (ln) {
        T* mrow = m_t + o;
        row_layer_norm_backward(g, mrow, gh, mu_all[t * B + b], rs_all[t * B + b], u, mrow, dgh);
      }
    };
    for_backward_parts(ln, B, grain, u, chunk, [&](int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
      T* tmp = tmp_rows.mine();
      T* xrow = needs_input(act) ? x_rows.mine() : nullptr;
      T* dgh = ln ? dgh_rows.mine() : nullptr;
      for (int64_t b = b0; b < b1; ++b) grads(b, j0, j1, tmp, xrow, dgh);
    });
    if (t > 0 || h0_grad) {  // (h_0's gradient: only when asked for)
      previous_h_grad<T>(ln ? (*M)[t] : G[t], WT, onednn, rec, u, chunk, dY_all, t, rd_p, wa, dh_p,
                         dhn_all, r_scratch.data(), dh2.data_ptr<T>());
    }
    std::swap(dh, dh2);
  }
  if (ln) dgh_rows.sum_into(dg_h->data_ptr<T>());
  if (!dh.is_same(dh_in)) dh_in.copy_(dh);
}

void simple_backward(const at::Tensor& G, const at::Tensor& WT, bool onednn, const at::Tensor& H,
                     const at::Tensor& dY, const at::Tensor& dh,
                     const std::optional<at::Tensor>& rd, const std::optional<at::Tensor>& a,
                     int64_t act, bool direct, const std::optional<at::Tensor>& M,
                     const std::optional<at::Tensor>& MU, const std::optional<at::Tensor>& RS,
                     const std::optional<at::Tensor>& g_h, const std::optional<at::Tensor>& dg_h,
                     const std::optional<at::Tensor>& P, bool h0_grad) {
  for (const auto* x : {&G, &H, &dY, &dh}) check_contiguous(*x, "G/H/dY/dh");
  check_pre_activations(P, G, !direct, act, act);
  if (rd.has_value()) check_contiguous(*rd, "rd");
  if (a.has_value()) check_contiguous(*a, "a");
  TORCH_CHECK(!g_h.has_value() || (M.has_value() && dg_h.has_value()),
              "rnnkit fused_cpu: a layer-norm SimpleRNN backward needs M and dg_h");
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "rnnkit_simple_backward", [&] {
    simple_backward_impl<scalar_t>(G, WT, onednn, H, dY, dh, rd, a, act, direct, M, MU, RS, g_h,
                                   dg_h, P, h0_grad);
  });
}

// Bernoulli masks from SplitMix64 (Steele, Lea & Flood 2014): value k of the stream started at
// `seed` is mix(seed + (k + 1) * gamma); each 64-bit value gives two 32-bit draws, and a draw
// below p * 2^32 is a 1. Counter-based: element i of `out` depends only on (seed, i), so the mask
// is the same for any thread count, and the loop vectorises (64-bit multiplies), unlike torch's
// Mersenne-Twister draws (measured 1.9 ms for a 32 x 100 x 256 mask, 1 thread).
inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

template <typename T>
void bernoulli_fill(T* out, int64_t n, uint64_t threshold, uint64_t seed) {
  constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;
  const int64_t pairs = (n + 1) / 2;
  at::parallel_for(0, pairs, 1 << 15, [&](int64_t k0, int64_t k1) {
    const int64_t full = std::min(k1, n / 2);  // pairs with both elements inside `out`
    for (int64_t k = k0; k < full; ++k) {
      const uint64_t z = splitmix64_mix(seed + static_cast<uint64_t>(k + 1) * kGamma);
      out[2 * k] = (z & 0xffffffffULL) < threshold ? T(1) : T(0);
      out[2 * k + 1] = (z >> 32) < threshold ? T(1) : T(0);
    }
    if (full < k1) {  // the last, odd element
      const uint64_t z = splitmix64_mix(seed + static_cast<uint64_t>(full + 1) * kGamma);
      out[2 * full] = (z & 0xffffffffULL) < threshold ? T(1) : T(0);
    }
  });
}

// x (R, C) -> x^T (C, R), contiguous: the vendor backend hands torch's RNN kernels their weights
// in torch's layout (and the gradients back in Keras'), 16 x 16 register tiles for float32
// (measured on the (200, 800) weights of PTB-small: ~5x faster than at::Tensor::contiguous()),
// split between threads by 16-column strips.
at::Tensor transpose(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "rnnkit fused_cpu: transpose takes a 2-D tensor, received ", x.dim(),
              "-D");
  if (!x.device().is_cpu()) return x.t().contiguous();
  const at::Tensor src = x.contiguous();
  const int64_t R = src.size(0), C = src.size(1);
  at::Tensor out = at::empty({C, R}, src.options());
  if (src.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "rnnkit_transpose", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* d = out.data_ptr<scalar_t>();
    const int64_t strips = (C + 15) / 16;
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(R, 1));  // strips
    at::parallel_for(0, strips, grain, [&](int64_t b0, int64_t b1) {
      transpose_cols<scalar_t>(s, R, C, d, R, b0 * 16, std::min(C, b1 * 16));
    });
  });
  return out;
}

// [a_1 | a_2 | ...]^T @ b for tall float32 a_i (N, K_i) and b (N, Nc), all contiguous: the weight
// gradients over all steps of the cells whose backward passes run in Python (GRU, SimpleRNN, the
// layer-norm LSTM's input projection), as the LSTM's loops sum theirs (brgemm_weight_grads:
// the a_i transposed in chunks of ~128 rows, b read as it is). Needs brgemm; fused.py uses it up
// to kBrgemmGradMaxCols columns of b. bf16: the products in bfloat16 (a bfloat16 call; float32
// accumulation), as the bfloat16 LSTM's (brgemm_weight_grads_bf16), at any width.
int64_t weight_grads_max_cols() { return kBrgemmGradMaxCols; }

at::Tensor weight_grads(const std::vector<at::Tensor>& lefts, const at::Tensor& b, bool bf16) {
  TORCH_CHECK(kHaveBrgemm, "rnnkit fused_cpu: weight_grads needs brgemm");
  TORCH_CHECK(!bf16 || kHaveBf16, "rnnkit fused_cpu: built without bfloat16 products");
  TORCH_CHECK(!lefts.empty() && b.dim() == 2 && b.is_contiguous() &&
                  b.scalar_type() == at::kFloat,
              "rnnkit fused_cpu: weight_grads takes contiguous float32 (N, Nc) b");
  const int64_t N = b.size(0), Nc = b.size(1);
  int64_t K = 0;
  for (const auto& a : lefts) {
    TORCH_CHECK(a.dim() == 2 && a.size(0) == N && a.is_contiguous() &&
                    a.scalar_type() == at::kFloat,
                "rnnkit fused_cpu: weight_grads takes contiguous float32 (N, K_i) lefts, N = ", N);
    K += a.size(1);
  }
  at::Tensor out = at::empty({K, Nc}, b.options());
  if (N == 0) return out.zero_();
  const int64_t rows = std::min(N, kBrgemmGradRows);
  at::Tensor lt_buf = at::empty({K * rows}, b.options());
  float* lt = lt_buf.data_ptr<float>();
  const int64_t rows_p = (rows + 1) / 2 * 2;  // bfloat16: lt rounded, b's rows in VNNI pairs
  Scratch<at::BFloat16> lt_b(bf16 ? K * rows_p : 0);
  ThreadRows<at::BFloat16> pack(bf16 ? rows_p * weight_grad_block(Nc) : 0);
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    int64_t k0 = 0;  // lt rows [k0, k0 + K_i) = a_i rows [r0, r0 + n) transposed
    for (const auto& a : lefts) {
      const int64_t Ka = a.size(1);
      const float* src = a.data_ptr<float>() + r0 * Ka;
      float* dst = lt + k0 * n;
      at::parallel_for(0, (Ka + 63) / 64, 1, [&](int64_t p0, int64_t p1) {
        transpose_cols(src, n, Ka, dst, n, p0 * 64, std::min(Ka, p1 * 64));
      });
      k0 += Ka;
    }
    const float* b_rows = b.data_ptr<float>() + r0 * Nc;
    if (bf16) {
      brgemm_weight_grads_bf16<float>(out, lt, lt_b.data(), K, b_rows, Nc, n, r0 > 0, pack);
    } else {
      brgemm_weight_grads<float>(out, lt, K, b_rows, Nc, n, r0 > 0);
    }
  }
  return out;
}

void bernoulli_mask_(const at::Tensor& out, double p, int64_t seed) {
  check_contiguous(out, "out");
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "rnnkit fused_cpu: p must be in [0, 1], received ", p);
  const uint64_t threshold =
      p >= 1.0 ? (uint64_t(1) << 32) : static_cast<uint64_t>(p * 4294967296.0);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_bernoulli_mask", [&] {
    bernoulli_fill<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), threshold,
                             static_cast<uint64_t>(seed));
  });
}

}  // namespace

TORCH_LIBRARY(rnnkit_cpu, m) {
  m.def(
      "lstm_forward(Tensor(a!) G, Tensor W, bool onednn, Tensor(b!) H, Tensor(c!) C, "
      "Tensor(d!)? CN, Tensor(e!) TC, Tensor(f!)? Hin, Tensor? rd, Tensor? a, Tensor? valid, "
      "int act, int ract, int mode, bool save, Tensor(g!)? M, Tensor(h!)? MU_h, "
      "Tensor(i!)? RS_h, Tensor(j!)? MU_c, Tensor(k!)? RS_c, Tensor? g_h, Tensor? g_c, "
      "Tensor? b_c, Tensor(l!)? P, float eps, Tensor? XS=None, Tensor? W_in=None, "
      "Tensor? b_in=None) -> ()");
  m.def(
      "lstm_backward(Tensor(a!) G, Tensor WT, bool onednn, Tensor H, Tensor C, Tensor? CN, "
      "Tensor TC, Tensor dY, Tensor(b!) dh, Tensor(c!) dc, Tensor? rd, Tensor? a, "
      "Tensor? valid, int act, int ract, Tensor(d!)? M, Tensor? MU_h, Tensor? RS_h, "
      "Tensor? MU_c, Tensor? RS_c, Tensor? g_h, Tensor? g_c, Tensor? b_c, Tensor(e!)? dg_c, "
      "Tensor(k!)? db_c, "
      "Tensor(f!)? dg_h, Tensor(g!)? db, Tensor? P, Tensor? XS, Tensor? HS, Tensor(h!)? DWU, "
      "bool h0_grad=True) -> ()");
  m.def(
      "gru_forward(Tensor(a!) G, Tensor W, bool onednn, Tensor(b!) H, Tensor(c!) R, "
      "Tensor? b_rec, Tensor(d!)? Hin, Tensor? rd, Tensor? a, Tensor? valid, int act, int ract, "
      "int mode, bool save, Tensor(e!)? M, Tensor(f!)? MU, Tensor(g!)? RS, Tensor? g_h, "
      "Tensor(h!)? P, float eps) -> ()");
  m.def(
      "gru_backward(Tensor(a!) G, Tensor WT, bool onednn, Tensor H, Tensor(b!) R, Tensor dY, "
      "Tensor(c!) dh, Tensor? rd, Tensor? a, int act, int ract, Tensor? M, Tensor? MU, "
      "Tensor? RS, Tensor? g_h, Tensor? b_rec, Tensor(d!)? DM, Tensor? P, Tensor(e!)? dg_h, "
      "bool h0_grad=True) -> ()");
  m.def(
      "gru_rb_forward(Tensor(a!) G, Tensor Wzr, Tensor Wh, bool onednn, Tensor(b!) H, "
      "Tensor(c!) RH, Tensor(d!)? Hin, Tensor? rd, Tensor? a, Tensor? valid, int act, int ract, "
      "int mode, bool save, Tensor(e!)? Mzr, Tensor(f!)? Mh, Tensor(g!)? MU, Tensor(h!)? RS, "
      "Tensor? g_h, Tensor(i!)? P, float eps) -> ()");
  m.def(
      "gru_rb_backward(Tensor(a!) G, Tensor WzrT, Tensor WhT, bool onednn, Tensor H, Tensor RH, "
      "Tensor dY, Tensor(b!) dh, Tensor? Hin, Tensor? rd, Tensor? a, int act, int ract, "
      "Tensor? Mzr, Tensor? Mh, Tensor? MU, Tensor? RS, Tensor? g_h, Tensor(c!) DMzr, "
      "Tensor(d!) DMh, Tensor(e!)? dg_h, Tensor? P, bool h0_grad=True) -> ()");
  m.def(
      "simple_forward(Tensor(a!) G, Tensor W, bool onednn, Tensor(b!) H, Tensor(c!)? Hin, "
      "Tensor? rd, Tensor? a, Tensor? valid, int act, int mode, bool save, Tensor(d!)? M, "
      "Tensor(e!)? MU, Tensor(f!)? RS, Tensor? g_h, Tensor(g!)? P, float eps) -> ()");
  m.def(
      "simple_backward(Tensor(a!) G, Tensor WT, bool onednn, Tensor H, Tensor dY, Tensor(b!) dh, "
      "Tensor? rd, Tensor? a, int act, bool direct, Tensor(c!)? M, Tensor? MU, Tensor? RS, "
      "Tensor? g_h, Tensor(d!)? dg_h, Tensor? P, bool h0_grad=True) -> ()");
  m.def("bernoulli_mask_(Tensor(a!) out, float p, int seed) -> ()");
  m.def("transpose(Tensor x) -> Tensor");
  m.def("weight_grads(Tensor[] lefts, Tensor b, bool bf16=False) -> Tensor");
  // no tensors: catch-all kernels
  m.def("has_brgemm() -> bool", &has_brgemm);
  m.def("has_bf16_products() -> bool", &has_bf16_products);
  m.def("weight_grads_max_cols() -> int", &weight_grads_max_cols);
}

// CompositeExplicitAutograd: every backend key, including MkldnnCPU (the packed weight).
TORCH_LIBRARY_IMPL(rnnkit_cpu, CompositeExplicitAutograd, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("gru_rb_forward", &gru_rb_forward);
  m.impl("gru_rb_backward", &gru_rb_backward);
  m.impl("simple_forward", &simple_forward);
  m.impl("simple_backward", &simple_backward);
  m.impl("bernoulli_mask_", &bernoulli_mask_);
  m.impl("transpose", &transpose);
  m.impl("weight_grads", &weight_grads);
}
