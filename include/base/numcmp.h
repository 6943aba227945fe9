/* numcmp.h - compares two arrays of elements, possibly of different float
 * dtypes, bytewise or within tolerances (verify --reference).
 *
 * Bytes: equal dtypes and no tolerance; the first element whose bytes
 * differ. Values: both sides converted to float64 exactly (every float dtype
 * widens losslessly), equal when |a - b| <= atol + rtol * |b| (b is the
 * reference, as numpy.isclose), or both NaN, or equal infinities.
 */
#ifndef FM_NUMCMP_H
#define FM_NUMCMP_H

#include <stdbool.h>
#include <stddef.h>

#include "base/dtype.h"

typedef struct nc_tol {
    double atol, rtol;
} nc_tol;

/*! nc_bytewise() : the comparison of ta against tb is bytewise. */
bool nc_bytewise(dt_type ta, dt_type tb, const nc_tol *tol);

/*! nc_comparable() : bytewise, or both float dtypes with a tolerance. */
bool nc_comparable(dt_type ta, dt_type tb, const nc_tol *tol);

/*! nc_first_diff() : index of the first of n elements where a (type ta)
 *  and b (type tb, the reference) differ, or n when none. scratch holds 2n
 *  doubles (unused when bytewise). */
size_t nc_first_diff(dt_type ta, const void *a, dt_type tb, const void *b, size_t n, const nc_tol *tol, double *scratch);

#endif
