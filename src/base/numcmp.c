/* numcmp.c - see numcmp.h. */
#include "base/numcmp.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

bool nc_bytewise(dt_type ta, dt_type tb, const nc_tol *tol)
{
    return ta == tb && tol->atol == 0 && tol->rtol == 0;
}

bool nc_comparable(dt_type ta, dt_type tb, const nc_tol *tol)
{
    return nc_bytewise(ta, tb, tol) || (ta == tb && !dt_is_float(ta)) ||
           (dt_is_float(ta) && dt_is_float(tb) && (tol->atol > 0 || tol->rtol > 0));
}

static bool close_enough(double x, double y, const nc_tol *tol)
{
    if (isnan(x) || isnan(y)) return isnan(x) && isnan(y);
    if (x == y) return true; /* equal infinities too */
    if (isinf(x) || isinf(y)) return false;
    return fabs(x - y) <= tol->atol + tol->rtol * fabs(y);
}

size_t nc_first_diff(dt_type ta, const void *a, dt_type tb, const void *b, size_t n, const nc_tol *tol, double *scratch)
{
    size_t es = dt_size(ta);
    if (nc_bytewise(ta, tb, tol) || !dt_is_float(ta) || !dt_is_float(tb)) {
        if (memcmp(a, b, n * es) == 0) return n;
        size_t k = 0;
        while (memcmp((const uint8_t *)a + k * es, (const uint8_t *)b + k * es, es) == 0) k++;
        return k;
    }
    double *da = scratch, *db = scratch + n;
    dt_convert(ta, DT_F64, a, da, n, false);
    dt_convert(tb, DT_F64, b, db, n, false);
    for (size_t k = 0; k < n; k++)
        if (!close_enough(da[k], db[k], tol)) return k;
    return n;
}
