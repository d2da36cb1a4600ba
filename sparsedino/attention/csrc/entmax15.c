/* Row-fused entmax-1.5 kernels (forward solve, recompute from thresholds, backward) for float and double.

   The kernels are written once, type-generically, in entmax15_impl.h and instantiated below for each
   type: T is the element type, SQRT its square root, FN(name) the name with the type's suffix
   (entmax15_rows_f32, entmax15_rows_f64, ...). Built and loaded by sparsedino/attention/native.py, which
   passes SPARSEDINO_TINY (the guard against dividing by an empty sum) from its one Python home. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef SPARSEDINO_TINY
#error "SPARSEDINO_TINY must be defined by the build (see sparsedino/attention/native.py)"
#endif

#define SPARSEDINO_CAT_(a, b) a##_##b
#define SPARSEDINO_CAT(a, b) SPARSEDINO_CAT_(a, b)
#define FN(name) SPARSEDINO_CAT(name, SUFFIX)

#define T float
#define SUFFIX f32
#define SQRT sqrtf
#include "entmax15_impl.h"
#undef T
#undef SUFFIX
#undef SQRT

#define T double
#define SUFFIX f64
#define SQRT sqrt
#include "entmax15_impl.h"
#undef T
#undef SUFFIX
#undef SQRT
