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

/* out[r, :] = sum_j p[r, j] * v[r / group, j, :] over the nonzero p[r, j] only: the attention output of
   sparse probabilities (p: rows x n, v: (rows / group) x n x dv, out: rows x dv; group = query rows per
   (batch, head)). A row's nonzeros are gathered first (blocks of W values whose bits are all zero, i.e. all
   +0.0, are skipped whole; -0.0 counts as zero too), then each W-wide slice of the output row is accumulated
   in registers over them. idx, val: scratch of n entries. */
typedef T FN(vec) __attribute__((vector_size(32)));
typedef uint32_t FN(bits) __attribute__((vector_size(32)));
#define W ((int)(32 / sizeof(T)))
static inline FN(vec) FN(load)(const T* a) { FN(vec) x; memcpy(&x, a, sizeof x); return x; }
static inline void FN(store)(T* a, FN(vec) x) { memcpy(a, &x, sizeof x); }

/* The nonzeros of a row (index, value), in order; returns their count. */
static inline int64_t FN(gather_nonzeros)(const T* pr, int64_t n, int64_t* idx, T* val) {
  int64_t k = 0, j = 0;
  for (; j + W <= n; j += W) {
    FN(bits) b; memcpy(&b, pr + j, sizeof b);
    uint32_t any = 0;
    for (int i = 0; i < (int)(sizeof b / sizeof(uint32_t)); ++i) any |= b[i];
    if (!any) continue;
    for (int i = 0; i < W; ++i) { idx[k] = j + i; val[k] = pr[j + i]; k += pr[j + i] != 0; }
  }
  for (; j < n; ++j) { idx[k] = j; val[k] = pr[j]; k += pr[j] != 0; }
  return k;
}

void FN(sparse_pv)(const T* p, const T* v, T* out, int64_t r0, int64_t r1, int64_t n, int64_t group,
                   int64_t dv, int64_t* idx, T* val) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* pr = p + r * n;
    const T* vg = v + (r / group) * n * dv;
    int64_t k = FN(gather_nonzeros)(pr, n, idx, val);
    T* o = out + r * dv;
    int64_t d0 = 0;
    for (; d0 + 4 * W <= dv; d0 += 4 * W) {  /* four accumulators: enough independent FMAs in flight */
      FN(vec) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t t = 0; t < k; ++t) {
        const T* vr = vg + idx[t] * dv + d0;
        const T w = val[t];
        a0 += w * FN(load)(vr); a1 += w * FN(load)(vr + W); a2 += w * FN(load)(vr + 2 * W); a3 += w * FN(load)(vr + 3 * W);
      }
      FN(store)(o + d0, a0); FN(store)(o + d0 + W, a1); FN(store)(o + d0 + 2 * W, a2); FN(store)(o + d0 + 3 * W, a3);
    }
    for (; d0 + W <= dv; d0 += W) {
      FN(vec) a0 = {0};
      for (int64_t t = 0; t < k; ++t) a0 += val[t] * FN(load)(vg + idx[t] * dv + d0);
      FN(store)(o + d0, a0);
    }
    for (; d0 < dv; ++d0) {
      T a = 0;
      for (int64_t t = 0; t < k; ++t) a += val[t] * vg[idx[t] * dv + d0];
      o[d0] = a;
    }
  }
}
#undef W

/* y += a * x and the dot product a . b over len values (vectors of W, then scalars). */
#define W ((int)(32 / sizeof(T)))
static inline void FN(axpy)(T* y, T a, const T* x, int64_t len) {
  int64_t i = 0;
  for (; i + W <= len; i += W) FN(store)(y + i, FN(load)(y + i) + a * FN(load)(x + i));
  for (; i < len; ++i) y[i] += a * x[i];
}
static inline T FN(dot)(const T* a, const T* b, int64_t len) {
  FN(vec) acc0 = {0}, acc1 = {0};
  int64_t i = 0;
  for (; i + 2 * W <= len; i += 2 * W) {
    acc0 += FN(load)(a + i) * FN(load)(b + i);
    acc1 += FN(load)(a + i + W) * FN(load)(b + i + W);
  }
  for (; i + W <= len; i += W) acc0 += FN(load)(a + i) * FN(load)(b + i);
  acc0 += acc1;
  T s = 0;
  for (int j = 0; j < W; ++j) s += acc0[j];
  for (; i < len; ++i) s += a[i] * b[i];
  return s;
}

/* Backward of out = P V, P = entmax-1.5(scores * scale), over each row's support only, for the (batch,
   head) groups [g0, g1) (each owns its dk, dv slices, which the caller zeroed): for query row r with
   support J, dp_j = dO_r . V_j and g_j = sqrt(p_j) (j in J); ds_j = g_j (dp_j - sum(g dp) / sum(g)) * scale
   (the entmax15_grad formula, zero off J); dQ_r = sum_j ds_j K_j; dK_j += ds_j Q_r; dV_j += p_j dO_r.
   Shapes: p (groups, n, m), q (groups, n, d), k (groups, m, d), v (groups, m, e), dout (groups, n, e).
   idx, val, dsv: scratch of m entries. */
void FN(sparse_attn_bwd)(const T* p, const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                         int64_t g0, int64_t g1, int64_t n, int64_t m, int64_t d, int64_t e, T scale,
                         int64_t* idx, T* val, T* dsv) {
  for (int64_t g = g0; g < g1; ++g) {
    const T *kg = k + g * m * d, *vg = v + g * m * e;
    T *dkg = dk + g * m * d, *dvg = dv + g * m * e;
    for (int64_t r = g * n; r < (g + 1) * n; ++r) {
      const T* pr = p + r * m;
      int64_t c = FN(gather_nonzeros)(pr, m, idx, val);
      const T *qr = q + r * d, *dor = dout + r * e;
      T sg = 0, sgd = 0;
      for (int64_t t = 0; t < c; ++t) {  /* dsv holds dp_j until it is used */
        T gt = SQRT(val[t]);
        dsv[t] = FN(dot)(dor, vg + idx[t] * e, e);
        sg += gt; sgd += gt * dsv[t];
      }
      T mean = sgd / (sg > (T)SPARSEDINO_TINY ? sg : (T)SPARSEDINO_TINY);
      T* dqr = dq + r * d;
      for (int64_t i = 0; i < d; ++i) dqr[i] = 0;
      for (int64_t t = 0; t < c; ++t) {
        T ds = SQRT(val[t]) * (dsv[t] - mean) * scale;
        FN(axpy)(dqr, ds, kg + idx[t] * d, d);
        FN(axpy)(dkg + idx[t] * d, ds, qr, d);
        FN(axpy)(dvg + idx[t] * e, val[t], dor, e);
      }
    }
  }
}
#undef W

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

int64_t FN(sparse_pv_par)(const T* p, const T* v, T* out, int64_t rows, int64_t n, int64_t group, int64_t dv, int threads) {
  int64_t failed = 0;
  #pragma omp parallel num_threads(threads) reduction(+:failed) if(threads > 1)
  {
    int64_t* idx = (int64_t*)malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));  /* per thread */
    T* val = (T*)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));
    failed += !idx || !val;
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      if (idx && val) FN(sparse_pv)(p, v, out, r, r + 1, n, group, dv, idx, val);
    free(idx); free(val);
  }
  return failed ? -1 : 0;
}

int64_t FN(sparse_attn_bwd_par)(const T* p, const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                                int64_t groups, int64_t n, int64_t m, int64_t d, int64_t e, T scale, int threads) {
  int64_t failed = 0;
  #pragma omp parallel num_threads(threads) reduction(+:failed) if(threads > 1)
  {
    size_t len = (size_t)(m > 0 ? m : 1);
    int64_t* idx = (int64_t*)malloc(sizeof(int64_t) * len);  /* per thread */
    T* val = (T*)malloc(sizeof(T) * len);
    T* dsv = (T*)malloc(sizeof(T) * len);
    failed += !idx || !val || !dsv;
    #pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g)
      if (idx && val && dsv) FN(sparse_attn_bwd)(p, q, k, v, dout, dq, dk, dv, g, g + 1, n, m, d, e, scale, idx, val, dsv);
    free(idx); free(val); free(dsv);
  }
  return failed ? -1 : 0;
}
