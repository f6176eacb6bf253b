// Exact int32 products of int8 rows, out[i, j] = sum_d x[i, d] * y[j, d], for x86-64 CPUs
// with AVX-512 VNNI: an XLA FFI handler (see __init__.py, which builds and registers it).
//
// VPDPBUSD multiplies unsigned by signed bytes and adds groups of four into int32 lanes,
// wrapping (never saturating). The rows of y are made unsigned by adding 128 (an exclusive
// or with 0x80) as they are packed, so each lane sums x . (y + 128) = x . y + 128 * sum(x);
// the second term is subtracted at the end. Every step is int32 arithmetic modulo 2**32, so
// the result is exact wherever the true product fits in int32 (jaxlin.native checks the
// number of features), the same contract as XLA's int8 dot with int32 output.
//
// Layout: a micro-kernel of 8 rows of x by 48 rows of y keeps 24 accumulators in
// registers; y is packed, per panel of 48 rows, into groups of four features
// ([d / 4][48][4] bytes), so one aligned 64-byte load feeds 16 lanes. Threads (one per CPU
// this process may run on, fewer for small products) take (panel, block of rows) units
// from an atomic counter and pack each panel they take into a buffer of their own.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 8;        // rows of x per micro-kernel
constexpr int64_t kPanel = 48;      // rows of y per packed panel (three 16-lane vectors)
constexpr int64_t kRowBlock = 128;  // rows of x per unit of work

struct Job {
  const int8_t* x;
  const int8_t* y;
  int32_t* out;
  const int32_t* correction;  // 128 * sum(x[i])
  int64_t m, n, groups;       // rows of x, rows of y, features / 4
  int64_t panels, row_blocks, block_rows;  // units: (panel, block of block_rows rows)
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};  // a thread could not allocate its panel buffer
};

#if defined(__x86_64__)
#define JAXLIN_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// t[g][i] = r[i][g] for a 16 x 16 block of int32 (t may be r).
JAXLIN_VNNI inline void Transpose16(const __m512i* r, __m512i* t) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // b[4 i + k], 128-bit lane L: element 4 L + k of rows 4 i .. 4 i + 3.
  for (int i = 0; i < 4; ++i) {
    b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i c0 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0x44);
    const __m512i c1 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0xEE);
    const __m512i c2 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0x44);
    const __m512i c3 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0xEE);
    t[k] = _mm512_shuffle_i32x4(c0, c2, 0x88);
    t[4 + k] = _mm512_shuffle_i32x4(c0, c2, 0xDD);
    t[8 + k] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    t[12 + k] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
  }
}

// packed[g][j][0..4] = y[j0 + j][4 g .. 4 g + 4] + 128 (as uint8), in 16 x 16 blocks of
// groups of four features; rows past n are packed as 128s (their sums are not stored).
JAXLIN_VNNI void PackPanel(const int8_t* y, int64_t n, int64_t groups, int64_t j0,
                           uint32_t* packed) {
  const __m512i flip = _mm512_set1_epi32(static_cast<int>(0x80808080u));
  __m512i r[16], t[16];
  for (int64_t jj = 0; jj < kPanel; jj += 16) {
    for (int64_t g0 = 0; g0 < groups; g0 += 16) {
      const int64_t width = std::min<int64_t>(16, groups - g0);
      const __mmask16 mask = width == 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>((1u << width) - 1);
      for (int i = 0; i < 16; ++i) {
        const int64_t row = j0 + jj + i;
        r[i] = row < n ? _mm512_maskz_loadu_epi32(mask, y + (row * groups + g0) * 4)
                       : _mm512_setzero_si512();
      }
      Transpose16(r, t);
      for (int64_t g = 0; g < width; ++g) {
        _mm512_store_si512(packed + (g0 + g) * kPanel + jj, _mm512_xor_si512(t[g], flip));
      }
    }
  }
}

#define JAXLIN_ROW(r)                                                         \
  {                                                                          \
    int32_t v;                                                               \
    std::memcpy(&v, a##r + o, 4);                                            \
    const __m512i av = _mm512_set1_epi32(v);                                 \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av);                          \
    c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av);                          \
    c##r##2 = _mm512_dpbusd_epi32(c##r##2, b2, av);                          \
  }

#define JAXLIN_STORE(r)                                                       \
  if (r < rows) {                                                            \
    const __m512i cv = _mm512_set1_epi32(correction[r]);                     \
    _mm512_mask_storeu_epi32(out + r * ldo, m0, _mm512_sub_epi32(c##r##0, cv));      \
    _mm512_mask_storeu_epi32(out + r * ldo + 16, m1, _mm512_sub_epi32(c##r##1, cv)); \
    _mm512_mask_storeu_epi32(out + r * ldo + 32, m2, _mm512_sub_epi32(c##r##2, cv)); \
  }

__mmask16 LaneMask(int64_t cols) {
  if (cols <= 0) return 0;
  return cols >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << cols) - 1);
}

// out[r, c] = x[r] . y[j0 + c] for r < rows (<= 8), c < cols (<= 48). Rows past `rows` read
// the last row again; their sums are not stored.
JAXLIN_VNNI void MicroKernel(const int8_t* x, int64_t ldx, int64_t rows, const uint8_t* packed,
                             int64_t groups, int32_t* out, int64_t ldo, int64_t cols,
                             const int32_t* correction) {
  const int8_t* a0 = x;
  const int8_t* a1 = x + std::min<int64_t>(1, rows - 1) * ldx;
  const int8_t* a2 = x + std::min<int64_t>(2, rows - 1) * ldx;
  const int8_t* a3 = x + std::min<int64_t>(3, rows - 1) * ldx;
  const int8_t* a4 = x + std::min<int64_t>(4, rows - 1) * ldx;
  const int8_t* a5 = x + std::min<int64_t>(5, rows - 1) * ldx;
  const int8_t* a6 = x + std::min<int64_t>(6, rows - 1) * ldx;
  const int8_t* a7 = x + std::min<int64_t>(7, rows - 1) * ldx;
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  __m512i c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  __m512i c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
  __m512i c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t o = 4 * g;
    const uint8_t* bp = packed + g * kPanel * 4;
    const __m512i b0 = _mm512_load_si512(bp);
    const __m512i b1 = _mm512_load_si512(bp + 64);
    const __m512i b2 = _mm512_load_si512(bp + 128);
    JAXLIN_ROW(0) JAXLIN_ROW(1) JAXLIN_ROW(2) JAXLIN_ROW(3)
    JAXLIN_ROW(4) JAXLIN_ROW(5) JAXLIN_ROW(6) JAXLIN_ROW(7)
  }
  const __mmask16 m0 = LaneMask(cols), m1 = LaneMask(cols - 16), m2 = LaneMask(cols - 32);
  JAXLIN_STORE(0) JAXLIN_STORE(1) JAXLIN_STORE(2) JAXLIN_STORE(3)
  JAXLIN_STORE(4) JAXLIN_STORE(5) JAXLIN_STORE(6) JAXLIN_STORE(7)
}

JAXLIN_VNNI void Work(Job* job) {
  const size_t bytes = static_cast<size_t>(job->groups) * kPanel * 4;
  void* buffer = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  if (buffer == nullptr) {
    job->failed = true;
    return;
  }
  uint32_t* packed = static_cast<uint32_t*>(buffer);
  int64_t packed_panel = -1;
  const int64_t units = job->panels * job->row_blocks;
  for (;;) {
    const int64_t u = job->next.fetch_add(1);
    if (u >= units) break;
    const int64_t p = u / job->row_blocks, rb = u % job->row_blocks;
    const int64_t j0 = p * kPanel;
    if (p != packed_panel) {
      PackPanel(job->y, job->n, job->groups, j0, packed);
      packed_panel = p;
    }
    const int64_t cols = std::min(kPanel, job->n - j0);
    const int64_t end = std::min(job->m, (rb + 1) * job->block_rows);
    for (int64_t i = rb * job->block_rows; i < end; i += kRows) {
      MicroKernel(job->x + i * job->groups * 4, job->groups * 4, std::min(kRows, end - i),
                  reinterpret_cast<const uint8_t*>(packed), job->groups,
                  job->out + i * job->n + j0, job->n, cols, job->correction + i);
    }
  }
  std::free(buffer);
}
#endif  // __x86_64__

int64_t UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// x: (m, d) and y: (n, d) with d a multiple of 4; out: (m, n). False where memory ran out.
bool Products(const int8_t* x, const int8_t* y, int32_t* out, int64_t m, int64_t n, int64_t d) {
#if defined(__x86_64__)
  std::vector<int32_t> correction(m);
  for (int64_t i = 0; i < m; ++i) {  // unsigned: wraps modulo 2**32 like the lanes
    uint32_t s = 0;
    for (int64_t k = 0; k < d; ++k) s += static_cast<uint32_t>(static_cast<int32_t>(x[i * d + k]));
    correction[i] = static_cast<int32_t>(128u * s);
  }
  Job job;
  job.x = x;
  job.y = y;
  job.out = out;
  job.correction = correction.data();
  job.m = m;
  job.n = n;
  job.groups = d / 4;
  job.panels = (n + kPanel - 1) / kPanel;
  // A thread for every 2**23 multiply-adds (about 20 microseconds of work) at most.
  const double work = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(d);
  int64_t threads = std::min<int64_t>(UsableCpus(), static_cast<int64_t>(work / 8388608.0));
  threads = std::max<int64_t>(1, threads);
  // Each panel is packed by every thread that takes a unit of it: with panels enough to
  // share, a unit is a whole panel (packed once); else blocks of rows.
  job.block_rows = job.panels >= 4 * threads ? m : kRowBlock;
  job.row_blocks = (m + job.block_rows - 1) / job.block_rows;
  threads = std::min<int64_t>(threads, job.panels * job.row_blocks);
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(Work, &job);
  Work(&job);
  for (auto& t : pool) t.join();
  return !job.failed;
#else
  return false;
#endif
}

ffi::Error Compute(ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> y,
                   ffi::ResultBuffer<ffi::S32> out) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vnni")) {
    return ffi::Error::InvalidArgument("this CPU has no AVX-512 VNNI instructions");
  }
#else
  return ffi::Error::InvalidArgument("this kernel runs on x86-64 CPUs only");
#endif
  const auto dx = x.dimensions(), dy = y.dimensions();
  if (dx.size() != 2 || dy.size() != 2 || dx[1] != dy[1]) {
    return ffi::Error::InvalidArgument("x and y must be 2-D with the same number of columns");
  }
  const int64_t m = dx[0], n = dy[0], d = dx[1];
  int32_t* result = out->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  const int8_t* xs = x.typed_data();
  const int8_t* ys = y.typed_data();
  // Pad the features to a multiple of 4 with zeros (which add nothing).
  const int64_t dp = (d + 3) / 4 * 4;
  std::vector<int8_t> xp, yp;
  if (dp != d) {
    xp.assign(m * dp, 0);
    yp.assign(n * dp, 0);
    for (int64_t i = 0; i < m; ++i) std::memcpy(&xp[i * dp], xs + i * d, d);
    for (int64_t j = 0; j < n; ++j) std::memcpy(&yp[j * dp], ys + j * d, d);
    xs = xp.data();
    ys = yp.data();
  }
  const ffi::Error no_memory = ffi::Error::Internal("out of memory for the packed panels");
  if (n >= kPanel || n >= m) {
    return Products(xs, ys, result, m, n, dp) ? ffi::Error::Success() : no_memory;
  }
  // Fewer rows of y than a panel holds: y . x^T (x packed, its panels full), transposed.
  std::vector<int32_t> transposed(n * m);
  if (!Products(ys, xs, transposed.data(), n, m, dp)) return no_memory;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) result[i * n + j] = transposed[j * m + i];
  }
  return ffi::Error::Success();
}

// Exceptions must not cross into XLA: out of memory (std::bad_alloc) or no thread to start
// (std::system_error) become the call's error.
ffi::Error Int8ProductsImpl(ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> y,
                            ffi::ResultBuffer<ffi::S32> out) {
  try {
    return Compute(x, y, out);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxlin's int8 product failed: ") + e.what());
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlinInt8Products, Int8ProductsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
