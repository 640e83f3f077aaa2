/*
 * kaiser's QEMU TCG plugin: logs every guest instruction fetch, data access and CR3 write
 * between the guest's phase markers, as fixed 24-byte records (three little-endian u64) in a raw
 * file that kaiser.record.raw turns into a recording (docs/recording.md).
 *
 *   -plugin libkaiser.so,out=FILE[,phys=on]
 *
 * Built at record time by kaiser.record.build against qemu-plugin.h from Debian's qemu source
 * package (never vendored). QEMU 7.2: QEMU_PLUGIN_VERSION 1, no register-read API.
 *
 * Records (a, b, c), op = b >> 56:
 *   0 fetch   a = vaddr, b |= size << 48
 *   1 load    a = vaddr, b |= size << 48, c = guest physical address (phys=on; else 0)
 *   2 store   as load
 *   3 cr3     a = vaddr of the mov to %cr3, b |= length << 48 (after that instruction's fetch)
 *   4 marker  a = vaddr, b |= code
 *   5 user    a = instructions, c = loads << 32 | stores: a user run not logged reference by
 *             reference (the guest asked for summaries), written when the kernel is entered
 *
 * Instrumentation: before the first BEGIN marker only marker instructions get a callback, so
 * the boot runs at TCG's normal speed. The first BEGIN calls qemu_plugin_reset, which drops the
 * translation cache, so every block is translated again with the full instrumentation; from
 * then on the callbacks log only between a BEGIN and its END.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { OP_FETCH, OP_LOAD, OP_STORE, OP_CR3, OP_MARK, OP_USER };

/* Marker: nopl 0x4b41XXXX(%rax) = 0f 1f 80 XX XX 41 4b ("KA"); XXXX is the code.
 * Codes (kaiser/record/guest.py): 0x1000|n begin workload n, 0x2000|n end workload n,
 * 0x0003 user summaries on, 0x0004 off. */
#define MARK_BEGIN 0x1000
#define MARK_END 0x2000
#define MARK_SUMMARY_ON 0x0003
#define MARK_SUMMARY_OFF 0x0004
/* The kernel half of the canonical address space (SDM Vol. 3A 4.5: bits 63:47 equal). */
#define KERNEL_HALF 0xffff800000000000ULL

struct insn_info {
    uint64_t vaddr;
    uint32_t size;
    int32_t mark; /* marker code, or -1 */
    bool cr3;     /* mov %reg,%cr3 */
};

static qemu_plugin_id_t self;
static FILE *out;
static bool phys;
static bool armed;    /* the full instrumentation is in (after the first BEGIN) */
static bool on;       /* between BEGIN and END: log */
static bool summary;  /* user runs as counts only */
static bool in_kernel;
static uint64_t user_insns, user_loads, user_stores;

#define BUF_RECS 65536
static uint64_t buf[BUF_RECS * 3];
static size_t nbuf;

static void flush_buf(void)
{
    if (nbuf && out) {
        fwrite(buf, 24, nbuf, out);
    }
    nbuf = 0;
}

static inline void put(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t *r = &buf[nbuf * 3];
    r[0] = a;
    r[1] = b;
    r[2] = c;
    if (++nbuf == BUF_RECS) {
        flush_buf();
    }
}

/* mov %reg,%cr3: [legacy prefixes] [REX with R clear] 0f 22 /3 (SDM Vol. 2B, MOV--Move to/from
 * Control Registers: REX.R with reg 0 is CR8; REX.R with reg 3 would be CR11). */
static bool is_mov_to_cr3(const uint8_t *p, size_t n)
{
    size_t i = 0;
    bool rex_r = false;
    while (i < n && (p[i] == 0x66 || p[i] == 0x67 || p[i] == 0xf2 || p[i] == 0xf3 || p[i] == 0x2e ||
                     p[i] == 0x3e || p[i] == 0x26 || p[i] == 0x36 || p[i] == 0x64 || p[i] == 0x65)) {
        i++;
    }
    if (i < n && (p[i] & 0xf0) == 0x40) {
        rex_r = p[i] & 0x4;
        i++;
    }
    return i + 3 <= n && p[i] == 0x0f && p[i + 1] == 0x22 && ((p[i + 2] >> 3) & 7) == 3 && !rex_r;
}

static int marker_code(const uint8_t *p, size_t n, uint64_t vaddr)
{
    if (vaddr >= KERNEL_HALF || n != 7) {
        return -1;
    }
    if (p[0] != 0x0f || p[1] != 0x1f || p[2] != 0x80 || p[5] != 0x41 || p[6] != 0x4b) {
        return -1;
    }
    return p[3] | (p[4] << 8);
}

static void install_callbacks(qemu_plugin_id_t id);

static void after_reset(qemu_plugin_id_t id)
{
    install_callbacks(id);
}

static void mode_change(bool kernel)
{
    if (kernel && !in_kernel && summary && user_insns) {
        put(user_insns, (uint64_t)OP_USER << 56, user_loads << 32 | (user_stores & 0xffffffffULL));
        user_insns = user_loads = user_stores = 0;
    }
    in_kernel = kernel;
}

static void on_marker(unsigned int vcpu, void *udata)
{
    struct insn_info *ii = udata;
    int code = ii->mark;
    (void)vcpu;
    put(ii->vaddr, (uint64_t)OP_MARK << 56 | (uint64_t)code, 0);
    if (code == MARK_SUMMARY_ON) {
        summary = true;
    } else if (code == MARK_SUMMARY_OFF) {
        summary = false;
    } else if ((code & 0xf000) == MARK_BEGIN && !armed) {
        armed = true; /* the first BEGIN: translate everything again, instrumented */
        on = true;
        in_kernel = false;
        user_insns = user_loads = user_stores = 0;
        qemu_plugin_reset(self, after_reset);
    } else if ((code & 0xf000) == MARK_BEGIN) {
        on = true;
        in_kernel = false;
        user_insns = user_loads = user_stores = 0;
    } else if ((code & 0xf000) == MARK_END && on) {
        /* No reset here: with a reset at END as well, QEMU 7.2 aborted in
         * qemu_plugin_vcpu_mem_cb ("code should not be reached"): cpu->plugin_mem_cbs still
         * pointed at the memory callbacks of a flushed block. So the instrumentation stays in,
         * its callbacks idle until the next BEGIN. */
        on = false;
        summary = false;
        flush_buf();
        fflush(out);
    }
}

static void on_exec(unsigned int vcpu, void *udata)
{
    struct insn_info *ii = udata;
    bool kernel = ii->vaddr >= KERNEL_HALF;
    (void)vcpu;
    if (!on) {
        return;
    }
    if (kernel != in_kernel) {
        mode_change(kernel);
    }
    if (!kernel && summary) {
        user_insns++;
        return;
    }
    put(ii->vaddr, (uint64_t)OP_FETCH << 56 | (uint64_t)ii->size << 48, 0);
    if (ii->cr3) {
        put(ii->vaddr, (uint64_t)OP_CR3 << 56 | (uint64_t)ii->size << 48, 0);
    }
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    bool store = qemu_plugin_mem_is_store(info);
    uint64_t size = 1ULL << qemu_plugin_mem_size_shift(info);
    uint64_t pa = 0;
    (void)vcpu;
    (void)udata;
    if (!on) {
        return;
    }
    if (!in_kernel && summary) {
        if (store) {
            user_stores++;
        } else {
            user_loads++;
        }
        return;
    }
    if (phys) {
        struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
        if (hw && !qemu_plugin_hwaddr_is_io(hw)) {
            pa = qemu_plugin_hwaddr_phys_addr(hw);
        }
    }
    put(vaddr, (uint64_t)(store ? OP_STORE : OP_LOAD) << 56 | size << 48, pa);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint8_t *bytes = qemu_plugin_insn_data(insn);
        size_t size = qemu_plugin_insn_size(insn);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        int mark = marker_code(bytes, size, vaddr);
        struct insn_info *ii;
        if (!armed && mark < 0) {
            continue;
        }
        ii = malloc(sizeof *ii); /* lives as long as the translation; never freed (bounded) */
        if (!ii) {
            abort();
        }
        ii->vaddr = vaddr;
        ii->size = (uint32_t)size;
        ii->mark = mark;
        ii->cr3 = is_mov_to_cr3(bytes, size);
        if (mark >= 0) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS, ii);
        }
        if (armed) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_exec, QEMU_PLUGIN_CB_NO_REGS, ii);
            qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
        }
    }
}

static void on_atexit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    flush_buf();
    if (out) {
        fclose(out);
        out = NULL;
    }
}

static void install_callbacks(qemu_plugin_id_t id)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strcmp(argv[i], "phys=on") == 0) {
            phys = true;
        } else if (strcmp(argv[i], "phys=off") == 0) {
            phys = false;
        } else {
            fprintf(stderr, "kaiser plugin: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (!path) {
        fprintf(stderr, "kaiser plugin: out=FILE is required\n");
        return -1;
    }
    out = fopen(path, "wb");
    if (!out) {
        perror(path);
        return -1;
    }
    self = id;
    install_callbacks(id);
    return 0;
}
