/* Live-migrate a vGPU from one instance to another through the C interface only.
 *
 * The source is driven as a guest driver would: register writes and GGTT entries through
 * trapped BAR0 accesses, data written into guest RAM (reported through the CPU dirty log
 * callback, as KVM's dirty bitmap would). It is migrated with the VFIO migration v2 flow:
 * RUNNING -> PRE_COPY (data read in chunks, the guest still writing), -> STOP_COPY (the rest),
 * -> STOP. The stream is first written, with one byte damaged, into the destination, which must
 * refuse it with an error code and keep its device state; after a reset the intact stream is
 * written in odd-sized chunks, RESUMING -> STOP commits it, and the destination's registers,
 * GGTT entries and config space (read back through its MMIO and config traps) and its guest RAM
 * must equal the source's. Exits 0 on success, 1 on any mismatch or failure.
 *
 * Built and run by `cargo xtask capi` (a step of `cargo xtask ci`). */

#include "vgpu_mig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_GFN 0x100u
#define FRAMES 256u /* 1 MiB of guest RAM */
#define GGTT_ENTRIES 64u
#define FENCES 4u
#define STREAM_MAX (16u << 20)

struct host {
    uint64_t dirty[FRAMES]; /* guest frames written since the last harvest */
    size_t dirty_len;
    unsigned long ggtt_maps;
};

struct vm {
    const char *name;
    VgpuMigDevice *dev;
    void *storage;
    uint8_t *ram;
    size_t ram_len;
    struct host host;
};

static int ggtt_map(void *ctx, uint64_t host_index, int present, uint64_t gfn, uint64_t entry)
{
    struct host *h = ctx;
    (void)host_index;
    (void)present;
    (void)gfn;
    (void)entry;
    h->ggtt_maps++;
    return 0;
}

static size_t harvest(void *ctx, uint64_t *gfns, size_t capacity)
{
    struct host *h = ctx;
    size_t n = h->dirty_len < capacity ? h->dirty_len : capacity;
    memcpy(gfns, h->dirty, n * sizeof *gfns);
    memmove(h->dirty, h->dirty + n, (h->dirty_len - n) * sizeof *gfns);
    h->dirty_len -= n;
    return n;
}

static void fail(const struct vm *vm, const char *what, int rc)
{
    char detail[256] = "";
    if (vm != NULL && vm->dev != NULL)
        vgpu_mig_last_error(vm->dev, detail, sizeof detail);
    fprintf(stderr, "migrate.c: %s%s%s failed: %d (%s)%s%s\n", vm ? vm->name : "", vm ? ": " : "",
            what, rc, vgpu_mig_strerror(rc), detail[0] ? ": " : "", detail);
    exit(1);
}

#define CHECK(vm, call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != VGPU_MIG_OK)                                                                    \
            fail((vm), #call, rc_);                                                                \
    } while (0)

static void create(struct vm *vm, const char *name, const VgpuMigConfig *cfg,
                   const VgpuMigLayout *layout)
{
    memset(vm, 0, sizeof *vm);
    vm->name = name;
    /* aligned_alloc wants a size that is a multiple of the alignment; the layout's is. */
    vm->storage = aligned_alloc(layout->storage_align, layout->storage_bytes);
    vm->ram_len = layout->guest_memory_bytes;
    vm->ram = calloc(1, vm->ram_len);
    if (vm->storage == NULL || vm->ram == NULL) {
        fprintf(stderr, "migrate.c: out of memory\n");
        exit(1);
    }
    VgpuMigHostOps ops = {.ctx = &vm->host, .ggtt_map = ggtt_map, .cpu_dirty_harvest = harvest};
    CHECK(vm, vgpu_mig_create(cfg, vm->storage, layout->storage_bytes, vm->ram, vm->ram_len, &ops,
                              &vm->dev));
}

/* A guest CPU store into RAM: the bytes land, then the CPU dirty log records the frame. */
static void guest_store(struct vm *vm, uint32_t frame, uint32_t offset, uint32_t seed, size_t len)
{
    uint8_t *p = vm->ram + (size_t)frame * VGPU_MIG_PAGE_SIZE + offset;
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
    for (size_t i = 0; i < vm->host.dirty_len; i++)
        if (vm->host.dirty[i] == FIRST_GFN + frame)
            return;
    vm->host.dirty[vm->host.dirty_len++] = FIRST_GFN + frame;
}

static uint64_t fence_value(uint32_t i)
{
    uint64_t start = 2ull * 4096 * i;
    return (start | 0x40 | 1) | ((start + 4096) << 32);
}

/* The guest driver's work: registers, fences, GGTT entries through the BAR0 window, RAM. */
static void drive_guest(struct vm *vm, uint32_t round)
{
    CHECK(vm, vgpu_mig_mmio_write(vm->dev, 0x4080, 4, round ? 0x1f : 0xf));
    for (uint32_t i = 0; i < FENCES; i++)
        CHECK(vm, vgpu_mig_mmio_write(vm->dev, 0x100000 + 8 * i, 8, fence_value(i + round)));
    for (uint32_t i = 0; i < GGTT_ENTRIES; i++) {
        uint64_t gfn = FIRST_GFN + (i * 7 + round * 3) % FRAMES;
        uint64_t entry = (gfn << 12) | 1; /* present, frame field bits 12.. */
        CHECK(vm, vgpu_mig_mmio_write(vm->dev, VGPU_MIG_GGTT_WINDOW + 8 * i, 8, entry));
    }
    CHECK(vm, vgpu_mig_config_write(vm->dev, 0x3c, 1, 0x0b)); /* interrupt line */
    for (uint32_t f = round; f < FRAMES; f += round ? 17 : 2)
        guest_store(vm, f, (f * 64) % 2048, f * 31 + round, 1024 + f % 1024);
}

/* Registers, GGTT entries and config space, read through the traps. */
#define SNAP_WORDS (1 + FENCES + GGTT_ENTRIES + 64)
static void snapshot(struct vm *vm, uint64_t *out)
{
    size_t k = 0;
    CHECK(vm, vgpu_mig_mmio_read(vm->dev, 0x4080, 4, &out[k++]));
    for (uint32_t i = 0; i < FENCES; i++)
        CHECK(vm, vgpu_mig_mmio_read(vm->dev, 0x100000 + 8 * i, 8, &out[k++]));
    for (uint32_t i = 0; i < GGTT_ENTRIES; i++)
        CHECK(vm, vgpu_mig_mmio_read(vm->dev, VGPU_MIG_GGTT_WINDOW + 8 * i, 8, &out[k++]));
    for (uint32_t i = 0; i < 64; i++) {
        uint32_t v = 0;
        CHECK(vm, vgpu_mig_config_read(vm->dev, 4 * i, 4, &v));
        out[k++] = v;
    }
}

/* Read whatever the source has now, appending to the stream; returns the bytes read. */
static size_t drain(struct vm *src, uint8_t *stream, size_t *len, uint64_t now_us)
{
    size_t total = 0;
    for (;;) {
        size_t n = 0;
        size_t room = STREAM_MAX - *len;
        CHECK(src, vgpu_mig_read(src->dev, stream + *len, room < 4096 ? room : 4096, now_us, &n));
        if (n == 0)
            return total;
        *len += n;
        total += n;
        if (*len == STREAM_MAX) {
            fprintf(stderr, "migrate.c: stream larger than %u bytes\n", STREAM_MAX);
            exit(1);
        }
    }
}

/* Write the stream into a RESUMING destination in `chunk`-byte pieces; returns the first code. */
static int feed(struct vm *dst, const uint8_t *stream, size_t len, size_t chunk)
{
    for (size_t at = 0; at < len;) {
        size_t want = len - at < chunk ? len - at : chunk;
        size_t n = 0;
        int rc = vgpu_mig_write(dst->dev, stream + at, want, &n);
        if (rc != VGPU_MIG_OK)
            return rc;
        if (n == 0) {
            fprintf(stderr, "migrate.c: destination consumed nothing at byte %zu\n", at);
            exit(1);
        }
        at += n;
    }
    return VGPU_MIG_OK;
}

int main(void)
{
    static const VgpuMigRegion regions[] = {{.first_gfn = FIRST_GFN, .frames = FRAMES}};
    VgpuMigConfig cfg = {
        .aperture_base = 0,
        .aperture_size = 1u << 20,
        .hidden_base = 0x10000000,
        .hidden_size = 1u << 20,
        .host_aperture_base = 0x2000000,
        .host_hidden_base = 0x20000000,
        .regions = regions,
        .region_count = 1,
        .caps = VGPU_MIG_CAP_STOP_COPY | VGPU_MIG_CAP_PRE_COPY | VGPU_MIG_CAP_P2P,
        .memory_mode = VGPU_MIG_MEMORY_STREAM,
        .stream_id = 0x5eed,
    };
    VgpuMigLayout layout;
    CHECK(NULL, vgpu_mig_layout(&cfg, &layout));
    printf("vgpu-mig %s: storage %zu bytes (align %zu; registers %zu, GGTT %zu, staging %zu), "
           "guest RAM %zu bytes\n",
           vgpu_mig_version(), layout.storage_bytes, layout.storage_align, layout.vregs_bytes,
           layout.ggtt_bytes, layout.staging_bytes, layout.guest_memory_bytes);

    static struct vm src, dst;
    create(&src, "source", &cfg, &layout);
    create(&dst, "destination", &cfg, &layout);

    drive_guest(&src, 0);

    /* Pre-copy while the guest keeps writing. */
    uint8_t *stream = malloc(STREAM_MAX);
    uint8_t *damaged = malloc(STREAM_MAX);
    if (stream == NULL || damaged == NULL)
        return 1;
    size_t len = 0;
    uint32_t state = 0;
    CHECK(&src, vgpu_mig_set_state(src.dev, VGPU_MIG_STATE_PRE_COPY, &state));
    uint64_t initial = 0, dirty = 0, now = 0;
    CHECK(&src, vgpu_mig_precopy_info(src.dev, &initial, &dirty));
    printf("PRE_COPY: precopy info initial %llu bytes, dirty %llu bytes\n",
           (unsigned long long)initial, (unsigned long long)dirty);
    for (uint32_t round = 1; round <= 3; round++) {
        size_t n = drain(&src, stream, &len, now += 10000);
        drive_guest(&src, round);
        CHECK(&src, vgpu_mig_precopy_info(src.dev, &initial, &dirty));
        printf("  read %zu bytes; guest wrote more; precopy info initial %llu, dirty %llu\n", n,
               (unsigned long long)initial, (unsigned long long)dirty);
    }
    drain(&src, stream, &len, now += 10000);

    /* Stop-and-copy. */
    uint64_t estimate = 0;
    CHECK(&src, vgpu_mig_stop_copy_size(src.dev, &estimate));
    CHECK(&src, vgpu_mig_set_state(src.dev, VGPU_MIG_STATE_STOP_COPY, &state));
    size_t before = len;
    while (vgpu_mig_is_saved(src.dev) != 1) {
        if (drain(&src, stream, &len, now += 10000) == 0 && vgpu_mig_is_saved(src.dev) != 1) {
            fprintf(stderr, "migrate.c: STOP_COPY read nothing and the stream is not complete\n");
            return 1;
        }
    }
    CHECK(&src, vgpu_mig_set_state(src.dev, VGPU_MIG_STATE_STOP, &state));
    printf("STOP_COPY: %zu bytes (estimate %llu); stream %zu bytes in total\n", len - before,
           (unsigned long long)estimate, len);

    uint64_t want[SNAP_WORDS], got[SNAP_WORDS], fresh[SNAP_WORDS];
    snapshot(&src, want);

    /* A damaged stream: refused with a code, the destination's device state untouched. */
    snapshot(&dst, fresh);
    memcpy(damaged, stream, len);
    damaged[len / 2] ^= 0x40;
    CHECK(&dst, vgpu_mig_set_state(dst.dev, VGPU_MIG_STATE_RESUMING, &state));
    int rc = feed(&dst, damaged, len, 4096);
    if (rc == VGPU_MIG_OK)
        rc = vgpu_mig_set_state(dst.dev, VGPU_MIG_STATE_STOP, &state);
    if (rc == VGPU_MIG_OK) {
        fprintf(stderr, "migrate.c: a stream with byte %zu damaged was accepted\n", len / 2);
        return 1;
    }
    char detail[256];
    vgpu_mig_last_error(dst.dev, detail, sizeof detail);
    printf("damaged stream (byte %zu of %zu flipped) refused: %d %s (%s)\n", len / 2, len, rc,
           vgpu_mig_strerror(rc), detail);
    if (vgpu_mig_get_state(dst.dev, &state) != VGPU_MIG_OK ||
        (state != VGPU_MIG_STATE_RESUMING && state != VGPU_MIG_STATE_ERROR)) {
        fprintf(stderr, "migrate.c: destination in state %u after the refusal\n", state);
        return 1;
    }
    snapshot(&dst, got);
    if (memcmp(got, fresh, sizeof got) != 0) {
        fprintf(stderr, "migrate.c: the refused stream changed the destination's device state\n");
        return 1;
    }
    printf("  destination device state untouched (%u words: registers, fences, GGTT entries, "
           "config dwords)\n",
           (unsigned)SNAP_WORDS);
    /* Out of ERROR (or abandoning RESUMING) by reset; the VMM discards the RAM it wrote. */
    CHECK(&dst, vgpu_mig_reset(dst.dev));
    memset(dst.ram, 0, dst.ram_len);

    /* The intact stream, in odd-sized chunks as a socket delivers it. */
    CHECK(&dst, vgpu_mig_set_state(dst.dev, VGPU_MIG_STATE_RESUMING, &state));
    CHECK(&dst, feed(&dst, stream, len, 1000));
    CHECK(&dst, vgpu_mig_set_state(dst.dev, VGPU_MIG_STATE_STOP, &state));
    snapshot(&dst, got);
    for (size_t i = 0; i < SNAP_WORDS; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "migrate.c: destination word %zu is %#llx, source %#llx\n", i,
                    (unsigned long long)got[i], (unsigned long long)want[i]);
            return 1;
        }
    }
    if (memcmp(src.ram, dst.ram, src.ram_len) != 0) {
        fprintf(stderr, "migrate.c: destination guest RAM differs from the source's\n");
        return 1;
    }
    CHECK(&dst, vgpu_mig_set_state(dst.dev, VGPU_MIG_STATE_RUNNING, &state));
    printf("migrated: %u words (registers, fences, GGTT entries, config dwords) and %zu bytes of "
           "guest RAM equal; "
           "destination RUNNING (%lu host GGTT updates)\n",
           (unsigned)SNAP_WORDS, src.ram_len, dst.host.ggtt_maps);

    vgpu_mig_destroy(src.dev);
    vgpu_mig_destroy(dst.dev);
    free(src.storage);
    free(dst.storage);
    free(src.ram);
    free(dst.ram);
    free(stream);
    free(damaged);
    return 0;
}
