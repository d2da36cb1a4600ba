"""Row-fused CPU kernels for entmax-1.5 (forward solve and backward), built once with the system C compiler.

Why: the sort-free solver makes ~7 dependent passes over each row. Expressed as tensor ops (eager or
``torch.compile``), every pass streams the whole (rows, n) score matrix through memory and ends with a
thread barrier; here each row is processed start to finish while it sits in L1 cache, and threads only meet
once per call. Only three passes touch the whole row (its max, the gathering of the candidates that can
be in the support, the output); the solver's passes run over the candidates, which attention rows keep
few of (measured 2.2x faster than solving over the whole row at 785 tokens, bit-identical output). The kernels are plain C (no torch headers), compiled in about a second with ``-O3`` for the
CPU's vector extension, cached under ``~/.cache/sparsedino`` (``SPARSEDINO_CACHE`` overrides) and called
through ``ctypes``. Rows are spread with OpenMP on torch's own OpenMP runtime (a compiler without OpenMP
gets serial kernels spread over a small Python thread pool; ctypes releases the GIL).

Used for contiguous float32/float64 CPU tensors when the compile policy allows it (``SPARSEDINO_COMPILE``
"auto"/"1", see :mod:`sparsedino.attention.compiled`); any failure to build falls back to the tensor-op path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "entmax15_grad_rows", "entmax15_recompute_rows", "entmax15_rows"]

_TEMPLATE = r"""
static int cmp_desc_SUFFIX(const void* a, const void* b) {
  T x = *(const T*)a, y = *(const T*)b;
  return (x < y) - (x > y);
}

/* Exact entmax-1.5 threshold of k values z (row max 0, every support element among them) by sorting them
   in place: for the rare rows the check rejects. */
static T sort_tau_SUFFIX(T* z, int64_t k) {
  qsort(z, (size_t)k, sizeof(T), cmp_desc_SUFFIX);
  T s1 = 0, s2 = 0, tau = -1;
  for (int64_t j = 1; j <= k; ++j) {
    T zj = z[j - 1];
    s1 += zj; s2 += zj * zj;
    T mean = s1 / (T)j;
    T delta = (1 - (s2 - s1 * mean)) / (T)j;
    T tj = mean - SQRT(delta > 0 ? delta : (T)0);
    if (tj <= zj) tau = tj;
  }
  return tau;
}

/* p = (x * h - off - tau)_+^2 over a row (p may alias x) */
static inline void write_p_SUFFIX(const T* xr, T* pr, int64_t n, T h, T off, T tau) {
  #pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T d = xr[i] * h - off - tau;
    d = d > 0 ? d : (T)0;
    pr[i] = d * d;
  }
}

/* Newton steps on h(tau) = ||(z - tau)_+|| - 1 over the candidates, then the closed form on the support
   {z > tau}; returns the closed-form threshold, or NAN when the KKT check rejects it (the closed form
   must keep that support). Newton iterates rise monotonically towards the root, so the support only
   shrinks and the candidates always contain it. */
static T newton_closed_form_SUFFIX(const T* z, int64_t k, T* tau, int steps) {
  for (int s = 0; s < steps; ++s) {
    T s1 = 0, s2 = 0;
    #pragma omp simd reduction(+:s1,s2)
    for (int64_t j = 0; j < k; ++j) { T d = z[j] - *tau; d = d > 0 ? d : (T)0; s1 += d; s2 += d * d; }
    T nrm = SQRT(s2);
    *tau += (nrm - 1) * nrm / (s1 > (T)1e-30 ? s1 : (T)1e-30);
  }
  T c = 0, z1 = 0, z2 = 0;
  #pragma omp simd reduction(+:c,z1,z2)
  for (int64_t j = 0; j < k; ++j) {
    T zs = z[j] > *tau ? z[j] : (T)0;
    c += z[j] > *tau ? (T)1 : (T)0; z1 += zs; z2 += zs * zs;
  }
  T mean = z1 / c;
  T delta = (1 - z2 + z1 * mean) / c;
  T tc = mean - SQRT(delta > 0 ? delta : (T)0);
  T c2 = 0;
  #pragma omp simd reduction(+:c2)
  for (int64_t j = 0; j < k; ++j) c2 += z[j] > tc ? (T)1 : (T)0;
  return (c2 == c && delta >= 0) ? tc : (T)NAN;
}

/* entmax-1.5 of one row x*h*2 (h = scale / 2 > 0) into pr (may alias xr). Three passes over the row: its
   max, the candidates z = x*h - max > -1 (the threshold is at least -1, so nothing else can be in the
   support; attention rows keep few), the output. Newton steps, the closed form and the KKT check run on
   the candidates; rows the check rejects get two more steps, then an exact sort of the candidates.
   All-(-inf) rows give zeros, rows with NaN give NaN. thr (may be NULL) receives (off, tau), with
   p = (x*h - off - tau)_+^2. cand: scratch of n values. Returns 1 when the row needed the sort. */
static int64_t entmax15_row_SUFFIX(const T* xr, T* pr, T* thr, int64_t n, T h, int steps, T* cand) {
  T m = -INFINITY, nans = 0;
  #pragma omp simd reduction(max:m) reduction(+:nans)
  for (int64_t i = 0; i < n; ++i) { m = xr[i] > m ? xr[i] : m; nans += xr[i] != xr[i]; }
  if (nans > 0 || !(m > -INFINITY)) {
    T fill = nans > 0 ? (T)NAN : (T)0;
    for (int64_t i = 0; i < n; ++i) pr[i] = fill;
    if (thr) { thr[0] = fill; thr[1] = INFINITY; }
    return 0;
  }
  const T off = m * h;
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) { T z = xr[i] * h - off; cand[k] = z; k += z > (T)-1; }  /* branch-free */
  T tau = -1;
  T tc = newton_closed_form_SUFFIX(cand, k, &tau, steps);
  if (tc != tc) tc = newton_closed_form_SUFFIX(cand, k, &tau, 2);
  int64_t sorted = tc != tc;
  if (sorted) tc = sort_tau_SUFFIX(cand, k);
  write_p_SUFFIX(xr, pr, n, h, off, tc);
  if (thr) { thr[0] = off; thr[1] = tc; }
  return sorted;
}

/* entmax-1.5 along rows [r0, r1) of length n (serial; the thread-pool fallback splits rows). */
int64_t entmax15_rows_SUFFIX(const T* x, T* p, T* thr, int64_t r0, int64_t r1, int64_t n, T h, int steps) {
  T* cand = (T*)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));
  if (!cand) return -1;
  int64_t sorted = 0;
  for (int64_t r = r0; r < r1; ++r)
    sorted += entmax15_row_SUFFIX(x + r * n, p + r * n, thr ? thr + 2 * r : NULL, n, h, steps, cand);
  free(cand);
  return sorted;
}

/* p = (x*h - off - tau)_+^2 from stored thresholds (bit-identical to the forward); p may alias x */
void entmax15_recompute_SUFFIX(const T* x, T* p, const T* thr, int64_t r0, int64_t r1, int64_t n, T h) {
  for (int64_t r = r0; r < r1; ++r) {
    T off = thr[2 * r];
    if (off != off) { for (int64_t i = 0; i < n; ++i) p[r * n + i] = (T)NAN; continue; }  /* NaN row */
    write_p_SUFFIX(x + r * n, p + r * n, n, h, off, thr[2 * r + 1]);
  }
}

/* ds = (g*dp - g*sum(g*dp)/sum(g)) * scale with g = sqrt(p); ds may alias dp (in place). */
void entmax15_grad_SUFFIX(const T* p, const T* dp, T* ds, int64_t r0, int64_t r1, int64_t n, T scale) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* pr = p + r * n;
    const T* gr = dp + r * n;
    T* out = ds + r * n;
    T sg = 0, sgd = 0;
    #pragma omp simd reduction(+:sg,sgd)
    for (int64_t i = 0; i < n; ++i) { T g = SQRT(pr[i]); sg += g; sgd += g * gr[i]; }
    T q = sgd / (sg > (T)1e-30 ? sg : (T)1e-30);
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) { T g = SQRT(pr[i]); out[i] = g * (gr[i] - q) * scale; }
  }
}

/* Row-parallel entry points. Built with -fopenmp they run on the process's OpenMP runtime: torch has
   already loaded libgomp.so.1, so these loops share torch's own worker threads instead of competing with
   them (a second pool next to OpenMP's spin-waiting workers made tiled attention 2-3x slower). */
int64_t entmax15_rows_par_SUFFIX(const T* x, T* p, T* thr, int64_t rows, int64_t n, T h, int steps, int threads) {
  int64_t sorted = 0;
  #pragma omp parallel num_threads(threads) reduction(+:sorted) if(threads > 1)
  {
    T* cand = (T*)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));  /* per thread */
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      sorted += cand ? entmax15_row_SUFFIX(x + r * n, p + r * n, thr ? thr + 2 * r : NULL, n, h, steps, cand) : -1;
    free(cand);
  }
  return sorted;
}

void entmax15_recompute_par_SUFFIX(const T* x, T* p, const T* thr, int64_t rows, int64_t n, T h, int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
  for (int64_t r = 0; r < rows; ++r) entmax15_recompute_SUFFIX(x, p, thr, r, r + 1, n, h);
}

void entmax15_grad_par_SUFFIX(const T* p, const T* dp, T* ds, int64_t rows, int64_t n, T scale, int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
  for (int64_t r = 0; r < rows; ++r) entmax15_grad_SUFFIX(p, dp, ds, r, r + 1, n, scale);
}
"""
_SOURCE = (
    "#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n"
    + _TEMPLATE.replace("SUFFIX", "f32")
    .replace("SQRT", "sqrtf")
    .replace("T ", "float ")
    .replace("(T)", "(float)")
    .replace("T*", "float*")
    + _TEMPLATE.replace("SUFFIX", "f64")
    .replace("SQRT", "sqrt")
    .replace("T ", "double ")
    .replace("(T)", "(double)")
    .replace("T*", "double*")
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_openmp = False  # True when the library was built with -fopenmp
# Worker threads for the row kernels (None: torch.get_num_threads()).
MAX_THREADS: int | None = None
# Rows per task: enough work per call to amortise the ctypes/thread hand-off.
_MIN_ELEMS_PER_TASK = 1 << 16


def _arch_flags() -> list[str]:
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "DEFAULT"
    if cap.startswith("AVX512"):
        return ["-mavx512f", "-mavx512dq", "-mavx2", "-mfma"]
    if cap == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


def _compile(compiler: str, flags: list[str], cache: Path) -> Path:
    key = hashlib.sha256((_SOURCE + " ".join(flags) + compiler).encode()).hexdigest()[:16]
    lib_path = cache / f"entmax15_{key}.so"
    if not lib_path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "entmax15.c"
            src.write_text(_SOURCE)
            out = Path(tmp) / "entmax15.so"
            res = subprocess.run(
                [compiler, *flags, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
            )
            if res.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {res.stderr.strip()[:500]}")
            os.replace(out, lib_path)  # atomic: concurrent builders never see a half-written library
    return lib_path


def _build() -> ctypes.CDLL:
    global _openmp
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    base = ["-O3", "-fPIC", "-shared", "-fno-math-errno", *_arch_flags()]
    cache = Path(os.environ.get("SPARSEDINO_CACHE", Path.home() / ".cache" / "sparsedino"))
    try:  # OpenMP build: row loops run on torch's OpenMP threads (see the C comment)
        lib_path, _openmp = _compile(compiler, [*base, "-fopenmp"], cache), True
    except RuntimeError:  # e.g. a compiler without OpenMP: serial kernels + a Python thread pool
        lib_path, _openmp = _compile(compiler, [*base, "-fopenmp-simd"], cache), False
    lib = ctypes.CDLL(str(lib_path))
    i64, i32 = ctypes.c_int64, ctypes.c_int
    vp = ctypes.c_void_p
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"entmax15_rows_{suffix}").argtypes = [vp, vp, vp, i64, i64, i64, real, i32]
        getattr(lib, f"entmax15_rows_{suffix}").restype = i64
        getattr(lib, f"entmax15_recompute_{suffix}").argtypes = [vp, vp, vp, i64, i64, i64, real]
        getattr(lib, f"entmax15_grad_{suffix}").argtypes = [vp, vp, vp, i64, i64, i64, real]
        getattr(lib, f"entmax15_rows_par_{suffix}").argtypes = [vp, vp, vp, i64, i64, real, i32, i32]
        getattr(lib, f"entmax15_rows_par_{suffix}").restype = i64
        getattr(lib, f"entmax15_recompute_par_{suffix}").argtypes = [vp, vp, vp, i64, i64, real, i32]
        getattr(lib, f"entmax15_grad_par_{suffix}").argtypes = [vp, vp, vp, i64, i64, real, i32]
    return lib


def available() -> bool:
    """Build (once) and report whether the native kernels can be used."""
    global _lib, _error
    if _lib is not None:
        return True
    if _error is not None:
        return False
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _build()
            except Exception as err:  # no compiler, read-only cache, exotic platform...
                _error = f"{type(err).__name__}: {err}"
    return _lib is not None


def build_error() -> str | None:
    """Why the native kernels are unavailable (None if they are, or were never tried)."""
    return _error


def _threads(rows: int, n: int) -> int:
    return max(1, min(MAX_THREADS or torch.get_num_threads(), rows * n // _MIN_ELEMS_PER_TASK))


def _run_rows(fn, rows: int, n: int, args_for) -> list:
    """Without OpenMP: split ``rows`` over a thread pool; ctypes drops the GIL so tasks run in parallel."""
    global _pool, _pool_size, _pool_pid
    threads = _threads(rows, n)
    if threads == 1:
        return [fn(*args_for(0, rows))]
    if _pool is None or _pool_size != threads or _pool_pid != os.getpid():  # pools do not survive fork
        _pool_pid = os.getpid()
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sparsedino-entmax")
        _pool_size = threads
    step = -(-rows // threads)
    futures = [_pool.submit(fn, *args_for(r, min(r + step, rows))) for r in range(0, rows, step)]
    return [f.result() for f in futures]


def entmax15_rows(
    x: Tensor, scale: float, steps: int, inplace: bool = False, thresholds: Tensor | None = None
) -> Tensor:
    """Exact entmax-1.5 of ``x * scale`` over the last dim of a contiguous CPU float32/64 tensor.

    Args:
        x: Scores (contiguous).
        scale: Positive scale applied to ``x``.
        steps: Newton steps before the closed form (rows failing the check are sorted, so any value is exact).
        inplace: Write the probabilities into ``x`` (a temporary the caller owns) instead of a new tensor.
        thresholds: Optional contiguous ``(rows, 2)`` tensor of ``x``'s dtype that receives each row's
            ``(off, tau)``, with which :func:`entmax15_recompute_rows` rebuilds the probabilities.

    Returns:
        Probabilities, shape and dtype of ``x``.
    """
    n = x.shape[-1]
    rows = x.numel() // max(n, 1)
    p = x if inplace else torch.empty_like(x)
    suffix = "f32" if x.dtype == torch.float32 else "f64"
    xp, pp = x.data_ptr(), p.data_ptr()
    tp = thresholds.data_ptr() if thresholds is not None else None
    h = 0.5 * scale
    if _openmp:
        status = [
            getattr(_lib, f"entmax15_rows_par_{suffix}")(xp, pp, tp, rows, n, h, steps, _threads(rows, n))
        ]
    else:
        fn = getattr(_lib, f"entmax15_rows_{suffix}")
        status = _run_rows(fn, rows, n, lambda r0, r1: (xp, pp, tp, r0, r1, n, h, steps))
    if min(status) < 0:
        raise MemoryError(f"entmax15 kernel: no memory for a scratch row of {n} values")
    return p


def entmax15_recompute_rows(x: Tensor, scale: float, thresholds: Tensor) -> Tensor:
    """Probabilities of ``x * scale`` from the thresholds :func:`entmax15_rows` stored, in place of ``x``.

    Bit-identical to the forward's output (same expression), at the cost of one pass instead of a solve.
    """
    n = x.shape[-1]
    rows = x.numel() // max(n, 1)
    suffix = "f32" if x.dtype == torch.float32 else "f64"
    xp, tp, h = x.data_ptr(), thresholds.data_ptr(), 0.5 * scale
    if _openmp:
        getattr(_lib, f"entmax15_recompute_par_{suffix}")(xp, xp, tp, rows, n, h, _threads(rows, n))
        return x
    fn = getattr(_lib, f"entmax15_recompute_{suffix}")
    _run_rows(fn, rows, n, lambda r0, r1: (xp, xp, tp, r0, r1, n, h))
    return x


def entmax15_grad_rows(p: Tensor, grad: Tensor, scale: float, inplace: bool = False) -> Tensor:
    """entmax-1.5 backward over the last dim (contiguous CPU tensors of one float dtype).

    ``inplace`` writes the result into ``grad`` (a temporary the caller owns).
    """
    n = p.shape[-1]
    rows = p.numel() // max(n, 1)
    out = grad if inplace else torch.empty_like(p)
    suffix = "f32" if p.dtype == torch.float32 else "f64"
    pp, gp, dp = p.data_ptr(), grad.data_ptr(), out.data_ptr()
    if _openmp:
        getattr(_lib, f"entmax15_grad_par_{suffix}")(pp, gp, dp, rows, n, scale, _threads(rows, n))
        return out
    fn = getattr(_lib, f"entmax15_grad_{suffix}")
    _run_rows(fn, rows, n, lambda r0, r1: (pp, gp, dp, r0, r1, n, scale))
    return out
