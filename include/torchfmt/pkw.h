/* pkw.h - writes a pkl_value tree as a pickle stream.
 *
 * The inverse of pkl_load(): the stream is what CPython's pickler would
 * write at protocol 2 for the objects the tree describes (the same opcodes
 * torch.save uses), so a tree read by pkl_load() and written back loads in
 * Python to equal objects. Every container and object is memoized when it
 * is first written (as CPython does), so shared values are written once and
 * referenced with BINGET, and cycles through objects/lists/dicts work.
 * PKL_BYTES is written in the protocol-2 form `_codecs.encode(str, "latin1")`.
 */
#ifndef FM_PKW_H
#define FM_PKW_H

#include "base/err.h"
#include "torchfmt/pkl.h"
#include "base/util.h"

/*! pkw_dump() : appends the pickle of root (PROTO 2 ... STOP) to out.
 *  @return : 0, FM_ENOMEM, or FM_EUNSUPPORTED (a cycle through a tuple). */
int pkw_dump(const pkl_doc *doc, const pkl_value *root, fm_buf *out, fm_err *e);

#endif
