/* test_dcp.c - archives inside a larger file (ptz_open_at, ptz_open_items,
 * ptzw_append) and the DCP .metadata parser on the real torch 2.6 / 2.14
 * fixtures: every chunk's item found, read and CRC-checked; damaged inputs
 * refused with the right code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/util.h"
#include "testutil.h"
#include "torchfmt/dcp.h"
#include "torchfmt/ptz.h"
#include "torchfmt/ptzw.h"

/* Two small archives appended to one file after 100 bytes of junk. */
static char *two_items(char *dir, ptz_item it[2])
{
    char *path = fm_path_join(dir, "x.distcp");
    fm_err e = {0};
    assert_int_equal(fm_write_file(path, "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789", 100, &e), 0);
    const char *payload[2] = {"first item payload", "the second one, longer than the first"};
    for (int k = 0; k < 2; k++) {
        ptzw *w = NULL;
        it[k].offset = (uint64_t)(100 + (k ? it[0].length : 0));
        assert_int_equal(ptzw_append(path, "archive", &w, &e), 0);
        assert_int_equal(ptzw_add(w, "data.pkl", "\x80\x02N.", 4, &e), 0);
        assert_int_equal(ptzw_add(w, "data/0", payload[k], strlen(payload[k]), &e), 0);
        assert_int_equal(ptzw_close(w, &e), 0);
        size_t len = 0;
        unsigned char *all = tu_slurp(path, &len);
        free(all);
        it[k].length = len - it[k].offset;
    }
    return path;
}

static void test_open_at_and_items(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    ptz_item it[2];
    char *path = two_items(dir, it);
    fm_err e = {0};
    ptz_file *f = NULL;
    assert_int_equal(ptz_open_at(path, 0, 0, it[1].offset, it[1].length, &f, &e), 0);
    uint8_t *v = NULL;
    size_t n = 0;
    assert_int_equal(ptz_read_record(f, "data/0", 1024, &v, &n, &e), 0);
    assert_string_equal((char *)v, "the second one, longer than the first");
    free(v);
    ptz_close(f);

    assert_int_equal(ptz_open_items(path, 0, 4096, it, 2, &f, &e), 0);
    char name[64];
    snprintf(name, sizeof name, "%llu/data/0", (unsigned long long)it[0].offset);
    assert_int_equal(ptz_read_record(f, name, 1024, &v, &n, &e), 0); /* CRC-checked */
    assert_string_equal((char *)v, "first item payload");
    free(v);
    assert_int_equal(ptz_scope(f, it[1].offset, &e), 0);
    assert_int_equal(ptz_read_record(f, "data/0", 1024, &v, &n, &e), 0);
    assert_string_equal((char *)v, "the second one, longer than the first");
    free(v);
    assert_int_equal(ptz_scope(f, UINT64_MAX, &e), 0);
    assert_false(ptz_find(f, "data/0", NULL));
    ptz_close(f);

    /* an item reaching past the end of the file, an item that is not an archive */
    ptz_item bad = {it[1].offset, it[1].length + 1};
    assert_int_equal(ptz_open_items(path, 0, 0, &bad, 1, &f, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "lies past the end of the file"));
    assert_null(f);
    bad = (ptz_item){0, 100};
    assert_int_equal(ptz_open_at(path, 0, 0, bad.offset, bad.length, &f, &e), FM_EFORMAT);
    assert_null(f);
    free(path);
    tu_rmdir(dir);
}

static void load(const char *rel, dcp_meta *m)
{
    size_t len = 0;
    unsigned char *buf = tu_slurp(tu_fixture(rel), &len);
    fm_err e = {0};
    int rc = dcp_meta_parse(buf, len, rel, m, &e);
    if (rc) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    free(buf);
}

static void test_metadata_fixtures(void **state)
{
    (void)state;
    const char *rels[3] = {"dcp_accelerate_ws4/pytorch_model_fsdp_0/.metadata", "dcp214_accelerate_ws4/pytorch_model_fsdp_0/.metadata",
                           "dcp_titan_ws4/step-1/.metadata"};
    for (int i = 0; i < 3; i++) {
        dcp_meta m;
        load(rels[i], &m);
        assert_int_equal(m.nfiles, 4);
        assert_string_equal(m.files[3], "__3_0.distcp");
        assert_true(m.nested);
        const dcp_key *k = &m.keys[0];
        assert_string_equal(k->fqn, "model.model.embed_tokens.weight");
        assert_int_equal(k->dtype, DT_F32);
        assert_int_equal(k->ndim, 2);
        assert_int_equal(k->size[0], 1003);
        assert_int_equal(k->nchunks, 4);
        assert_int_equal(k->chunks[3].offsets[0], 753);
        assert_int_equal(k->chunks[3].sizes[0], 250);
        assert_int_equal(k->chunks[3].file, 3);
        assert_null(k->chunks[0].transforms);
        char *prefix = NULL;
        fm_err e = {0};
        assert_int_equal(dcp_select(&m, NULL, &prefix, &e), 0);
        assert_string_equal(prefix, "model.");
        free(prefix);
        /* every tensor chunk's item is a torch.save archive of the chunk */
        ptz_file *zip = NULL;
        ti_index ix;
        char *dir = fm_path_dirname(tu_fixture(rels[i]));
        assert_int_equal(dcp_file_index(&m, dir, 2, "model.", 0, 0, &zip, &ix, &e), 0);
        assert_int_equal(ix.n, 27);
        assert_string_equal(ix.entries[0].key, "model.embed_tokens.weight");
        assert_int_equal(ix.entries[0].npieces, 1);
        assert_int_equal(ix.entries[0].pieces[0].goff[0], 502);
        uint32_t crc;
        assert_int_equal(ti_piece_crc(zip, &ix.entries[0].pieces[0], &crc, &e), 0);
        ti_index_free(&ix);
        ptz_close(zip);
        free(dir);
        dcp_meta_free(&m);
    }
}

static void test_metadata_damaged(void **state)
{
    (void)state;
    size_t len = 0;
    unsigned char *buf = tu_slurp(tu_fixture("dcp_titan_ws4/step-1/.metadata"), &len);
    dcp_meta m;
    fm_err e = {0};
    assert_int_equal(dcp_meta_parse(buf, len / 2, "half", &m, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "half"));
    assert_int_equal(m.n, 0);
    /* another entry by name, an unknown one */
    assert_int_equal(dcp_meta_parse(buf, len, "titan", &m, &e), 0);
    char *prefix = NULL;
    assert_int_equal(dcp_select(&m, "optimizer", &prefix, &e), 0);
    assert_string_equal(prefix, "optimizer.");
    free(prefix);
    assert_int_equal(dcp_select(&m, "nosuch", &prefix, &e), FM_EUSAGE);
    assert_non_null(strstr(e.msg, "'model', 'optimizer', 'train_state'"));
    dcp_meta_free(&m);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_at_and_items),
        cmocka_unit_test(test_metadata_fixtures),
        cmocka_unit_test(test_metadata_damaged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
