/* Type-generic body of the entmax-1.5 row kernels: included by entmax15.c once per element type, with
   T (float / double), SQRT (sqrtf / sqrt) and FN(name) (name_f32 / name_f64) defined there. No include
   guard on purpose. */
static int FN(cmp_desc)(const void* a, const void* b) {
  T x = *(const T*)a, y = *(const T*)b;
  return (x < y) - (x > y);
}

/* Exact entmax-1.5 threshold of k values z (row max 0, every support element among them) by sorting them
   in place: for the rare rows the check rejects. */
static T FN(sort_tau)(T* z, int64_t k) {
  qsort(z, (size_t)k, sizeof(T), FN(cmp_desc));
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
static inline void FN(write_p)(const T* xr, T* pr, int64_t n, T h, T off, T tau) {
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
static T FN(newton_closed_form)(const T* z, int64_t k, T* tau, int steps) {
  for (int s = 0; s < steps; ++s) {
    T s1 = 0, s2 = 0;
    #pragma omp simd reduction(+:s1,s2)
    for (int64_t j = 0; j < k; ++j) { T d = z[j] - *tau; d = d > 0 ? d : (T)0; s1 += d; s2 += d * d; }
    T nrm = SQRT(s2);
    *tau += (nrm - 1) * nrm / (s1 > (T)SPARSEDINO_TINY ? s1 : (T)SPARSEDINO_TINY);
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
static int64_t FN(entmax15_row)(const T* xr, T* pr, T* thr, int64_t n, T h, int steps, T* cand) {
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
  T tc = FN(newton_closed_form)(cand, k, &tau, steps);
  if (tc != tc) tc = FN(newton_closed_form)(cand, k, &tau, 2);
  int64_t sorted = tc != tc;
  if (sorted) tc = FN(sort_tau)(cand, k);
  FN(write_p)(xr, pr, n, h, off, tc);
  if (thr) { thr[0] = off; thr[1] = tc; }
  return sorted;
}

/* entmax-1.5 along rows [r0, r1) of length n (serial; the thread-pool fallback splits rows). */
int64_t FN(entmax15_rows)(const T* x, T* p, T* thr, int64_t r0, int64_t r1, int64_t n, T h, int steps) {
  T* cand = (T*)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));
  if (!cand) return -1;
  int64_t sorted = 0;
  for (int64_t r = r0; r < r1; ++r)
    sorted += FN(entmax15_row)(x + r * n, p + r * n, thr ? thr + 2 * r : NULL, n, h, steps, cand);
  free(cand);
  return sorted;
}

/* p = (x*h - off - tau)_+^2 from stored thresholds (bit-identical to the forward); p may alias x */
void FN(entmax15_recompute)(const T* x, T* p, const T* thr, int64_t r0, int64_t r1, int64_t n, T h) {
  for (int64_t r = r0; r < r1; ++r) {
    T off = thr[2 * r];
    if (off != off) { for (int64_t i = 0; i < n; ++i) p[r * n + i] = (T)NAN; continue; }  /* NaN row */
    FN(write_p)(x + r * n, p + r * n, n, h, off, thr[2 * r + 1]);
  }
}

/* ds = (g*dp - g*sum(g*dp)/sum(g)) * scale with g = sqrt(p); ds may alias dp (in place). */
void FN(entmax15_grad)(const T* p, const T* dp, T* ds, int64_t r0, int64_t r1, int64_t n, T scale) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* pr = p + r * n;
    const T* gr = dp + r * n;
    T* out = ds + r * n;
    T sg = 0, sgd = 0;
    #pragma omp simd reduction(+:sg,sgd)
    for (int64_t i = 0; i < n; ++i) { T g = SQRT(pr[i]); sg += g; sgd += g * gr[i]; }
    T q = sgd / (sg > (T)SPARSEDINO_TINY ? sg : (T)SPARSEDINO_TINY);
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) { T g = SQRT(pr[i]); out[i] = g * (gr[i] - q) * scale; }
  }
}

/* Row-parallel entry points. Built with -fopenmp they run on the process's OpenMP runtime: torch has
   already loaded libgomp.so.1, so these loops share torch's own worker threads instead of competing with
   them (a second pool next to OpenMP's spin-waiting workers made tiled attention 2-3x slower). */
int64_t FN(entmax15_rows_par)(const T* x, T* p, T* thr, int64_t rows, int64_t n, T h, int steps, int threads) {
  int64_t sorted = 0;
  #pragma omp parallel num_threads(threads) reduction(+:sorted) if(threads > 1)
  {
    T* cand = (T*)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));  /* per thread */
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      sorted += cand ? FN(entmax15_row)(x + r * n, p + r * n, thr ? thr + 2 * r : NULL, n, h, steps, cand) : -1;
    free(cand);
  }
  return sorted;
}

void FN(entmax15_recompute_par)(const T* x, T* p, const T* thr, int64_t rows, int64_t n, T h, int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
  for (int64_t r = 0; r < rows; ++r) FN(entmax15_recompute)(x, p, thr, r, r + 1, n, h);
}

void FN(entmax15_grad_par)(const T* p, const T* dp, T* ds, int64_t rows, int64_t n, T scale, int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
  for (int64_t r = 0; r < rows; ++r) FN(entmax15_grad)(p, dp, ds, r, r + 1, n, scale);
}
