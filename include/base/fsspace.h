/* fsspace.h - free space: the pre-flight check, reserving a file's blocks,
 * and messages that name the file system when a write runs out of room.
 *
 * A full disk must be found before the collective writes start: Open MPI's
 * ompio reports a failed pwritev from inside MPI_File_write_at_all without
 * returning it (the call "succeeds", the bytes are lost), and parallel HDF5
 * leaves peers stuck in a collective. So the output's file system is
 * checked with statvfs before any data moves, and every output file gets
 * its blocks reserved (fallocate, KEEP_SIZE) right after it is created:
 * ENOSPC/EDQUOT then comes from one call on one process, with a message.
 */
#ifndef FM_FSSPACE_H
#define FM_FSSPACE_H

#include <stdint.h>

#include "base/err.h"

/*! fs_mount_point() : the mount point holding path (an existing path) into
 *  buf; path itself when it cannot be found. */
const char *fs_mount_point(const char *path, char *buf, size_t len);

/*! fs_check_space() : FM_EIO "needs 6.2 GB, 1.1 GB free on /scratch" when
 *  fewer than need bytes are free for this user on dir's file system. */
int fs_check_space(const char *dir, uint64_t need, fm_err *e);

/*! fs_reserve() : reserves the blocks of [0, len) of the open file fd
 *  (path names it in messages) without changing its size. File systems
 *  that cannot (EOPNOTSUPP: NFS < 4.2, some parallel ones) are skipped. */
int fs_reserve(int fd, uint64_t len, const char *path, fm_err *e);

/*! fs_reserve_path() : fs_reserve() on a file opened by name. */
int fs_reserve_path(const char *path, uint64_t len, fm_err *e);

/*! fs_write_error() : fills e for a failed write of path with errno err;
 *  ENOSPC and EDQUOT name the file system and its free space. */
int fs_write_error(fm_err *e, int err, const char *path);

#endif
