/*
 * kaiser's guest init (PID 1 of the generated initramfs, linked -static): tells the host about
 * the kernel over QEMU's debug console (port 0xe9), then runs each job of /kaiser.conf between
 * phase markers the TCG plugin sees, and powers off.
 *
 * /kaiser.conf, one job a line, tab-separated: ID NAME CALLS ARG [ARGV...]
 *   NAME one of getppid close lseek read write pipe page-fault sched_yield timer s1bench program
 *   (program: run ARGV[0] with ARGV, ARG 1 to count its user side rather than log it; s1bench:
 *   ARG is N, the loads per call; timer: ARG is HZ)
 *
 * Markers: nopl 0x4b41XXXX(%rax) (bytes 0f 1f 80 XX XX 41 4b), XXXX = 0x1000|ID before a job,
 * 0x2000|ID after it, 0x0003/0x0004 user-side summaries on/off (plugin/kaiser_plugin.c).
 * Info channel lines: "@@key value"; kallsyms between @@kallsyms-begin and @@kallsyms-end.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define MARKER(c) asm volatile(".byte 0x0f,0x1f,0x80,%c0,%c1,0x41,0x4b" ::"i"((c) & 0xff), "i"(((c) >> 8) & 0xff) : "memory")
#define PAIR(n)                                                                                                        \
    case n:                                                                                                            \
        if (end)                                                                                                       \
            MARKER(0x2000 | n);                                                                                        \
        else                                                                                                           \
            MARKER(0x1000 | n);                                                                                        \
        break;

static void mark_job(int id, int end)
{
    switch (id) {
        PAIR(0) PAIR(1) PAIR(2) PAIR(3) PAIR(4) PAIR(5) PAIR(6) PAIR(7)
        PAIR(8) PAIR(9) PAIR(10) PAIR(11) PAIR(12) PAIR(13) PAIR(14) PAIR(15)
    }
}

static FILE *console;

static void say(const char *fmt, const char *arg)
{
    if (console) {
        fprintf(console, fmt, arg);
        fflush(console);
    }
}

/* ---- the info channel: QEMU's isa-debugcon at port 0xe9 ---------------------------------------- */
static void info_write(const char *s, size_t n)
{
    /* rep outsb: one byte per iteration to the debug console (SDM Vol. 2B, OUTS) */
    asm volatile("rep outsb" : "+S"(s), "+c"(n) : "d"(0xe9) : "memory");
}

static void info_line(const char *key, const char *value)
{
    char line[4096];
    int n = snprintf(line, sizeof line, "@@%s %s\n", key, value);
    if (n > (int)sizeof line - 1)
        n = sizeof line - 1;
    info_write(line, (size_t)n);
}

static void info_file_line(const char *key, const char *path)
{
    char buf[4096] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    info_line(key, buf);
}

/* ---- kernel memory through /proc/kcore (an ELF core: PT_LOAD segments at kernel addresses) ---- */
static int kcore = -1;
static Elf64_Phdr phdrs[128];
static int nphdr;

static void kcore_open(void)
{
    Elf64_Ehdr eh;
    kcore = open("/proc/kcore", O_RDONLY);
    if (kcore < 0 || pread(kcore, &eh, sizeof eh, 0) != sizeof eh || eh.e_phnum > 128) {
        kcore = -1;
        return;
    }
    nphdr = eh.e_phnum;
    if (pread(kcore, phdrs, sizeof(Elf64_Phdr) * nphdr, (off_t)eh.e_phoff) != (ssize_t)(sizeof(Elf64_Phdr) * nphdr))
        nphdr = 0;
}

static int kread(uint64_t vaddr, void *dst, size_t n)
{
    for (int i = 0; i < nphdr; i++) {
        Elf64_Phdr *p = &phdrs[i];
        if (p->p_type == PT_LOAD && vaddr >= p->p_vaddr && vaddr + n <= p->p_vaddr + p->p_memsz)
            return pread(kcore, dst, n, (off_t)(p->p_offset + (vaddr - p->p_vaddr))) == (ssize_t)n ? 0 : -1;
    }
    return -1;
}

/* Copies /proc/kallsyms to the info channel; returns the addresses of the named symbols. */
static const char *wanted[] = {"__per_cpu_offset", "pcpu_unit_size", "page_offset_base", "vmalloc_base",
                               "vmemmap_base"};
#define NWANTED (sizeof wanted / sizeof wanted[0])
static uint64_t wanted_addr[NWANTED];

static void info_kallsyms(void)
{
    char line[512];
    FILE *f = fopen("/proc/kallsyms", "r");
    info_write("@@kallsyms-begin\n", 17);
    while (f && fgets(line, sizeof line, f)) {
        char name[256], type;
        unsigned long long addr;
        info_write(line, strlen(line));
        if (sscanf(line, "%llx %c %255s", &addr, &type, name) == 3) {
            for (size_t i = 0; i < NWANTED; i++)
                if (strcmp(name, wanted[i]) == 0 && !strchr(line, '['))
                    wanted_addr[i] = addr;
        }
    }
    if (f)
        fclose(f);
    info_write("@@kallsyms-end\n", 15);
}

static void info_layout(void)
{
    char buf[128];
    for (int i = 0; i < nphdr; i++) {
        if (phdrs[i].p_type != PT_LOAD)
            continue;
        snprintf(buf, sizeof buf, "%#llx %#llx", (unsigned long long)phdrs[i].p_vaddr,
                 (unsigned long long)phdrs[i].p_memsz);
        info_line("kcore", buf);
    }
    for (size_t i = 0; i < NWANTED; i++) {
        uint64_t value = 0;
        int ok = wanted_addr[i] && kread(wanted_addr[i], &value, strcmp(wanted[i], "pcpu_unit_size") ? 8 : 4) == 0;
        snprintf(buf, sizeof buf, "%s %#llx", wanted[i], ok ? (unsigned long long)value : 0ULL);
        info_line(ok ? "value" : "value-missing", buf);
    }
}

static void info_model(void)
{
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *v = strchr(line, ':');
            v = v ? v + 1 : line;
            while (*v == ' ')
                v++;
            v[strcspn(v, "\n")] = 0;
            info_line("model", v);
            break;
        }
    }
    if (f)
        fclose(f);
}

/* ---- the workloads ------------------------------------------------------------------------------ */
#define PAGE 4096
static char iobuf[PAGE];

static void make_file(const char *path, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    memset(iobuf, 'k', sizeof iobuf);
    for (size_t done = 0; fd >= 0 && done < size; done += sizeof iobuf)
        if (write(fd, iobuf, sizeof iobuf) < 0)
            break;
    if (fd >= 0)
        close(fd);
}

static void job_pipe(int id, long calls)
{
    int ping[2], pong[2];
    char c = 'k';
    if (pipe(ping) || pipe(pong))
        return;
    pid_t child = fork();
    if (child == 0) {
        for (long i = 0; i < calls; i++) {
            if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1)
                break;
        }
        _exit(0);
    }
    mark_job(id, 0);
    for (long i = 0; i < calls; i++) {
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
            break;
    }
    mark_job(id, 1);
    waitpid(child, NULL, 0);
    close(ping[0]), close(ping[1]), close(pong[0]), close(pong[1]);
}

static void job_page_fault(int id, long calls)
{
    const size_t batch = 256; /* pages faulted in before each MADV_DONTNEED */
    char *area = mmap(NULL, batch * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return;
    madvise(area, batch * PAGE, MADV_NOHUGEPAGE); /* 4 KiB faults, never a THP */
    mark_job(id, 0);
    for (long i = 0; i < calls; i++) {
        size_t page = (size_t)i % batch;
        if (i && page == 0)
            madvise(area, batch * PAGE, MADV_DONTNEED);
        ((volatile char *)area)[page * PAGE] = 1;
    }
    mark_job(id, 1);
    munmap(area, batch * PAGE);
}

static void job_timer(int id, long calls, long hz)
{
    struct timespec t0, t;
    double seconds = (double)calls / (double)(hz > 0 ? hz : 250);
    volatile unsigned long spins = 0;
    mark_job(id, 0);
    MARKER(0x0003);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (int i = 0; i < 100000; i++)
            spins++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9 < seconds);
    MARKER(0x0004);
    mark_job(id, 1);
}

static void job_s1bench(int id, long calls, long loads)
{
    const size_t size = 100u << 20; /* 100 MB */
    volatile char *buf = malloc(size);
    unsigned long sum = 0;
    size_t pos = 0;
    if (!buf)
        return;
    for (size_t i = 0; i < size; i += PAGE)
        buf[i] = 1; /* fault it in before the marker */
    mark_job(id, 0);
    for (long i = 0; i < calls; i++) {
        close(999);
        for (long j = 0; j < loads; j++) {
            sum += (unsigned char)buf[pos];
            pos += 64;
            if (pos >= size)
                pos = 0;
        }
    }
    mark_job(id, 1);
    free((void *)buf);
    if (sum == 42)
        say("%s", "");
}

static void job_program(int id, char **argv, long summary)
{
    mark_job(id, 0);
    if (summary)
        MARKER(0x0003); /* the program's user side counted, not logged */
    pid_t child = fork();
    if (child == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    waitpid(child, &status, 0);
    mark_job(id, 1);
    char buf[64];
    snprintf(buf, sizeof buf, "%d", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    info_line("program-status", buf);
}

static void run_job(int id, const char *name, long calls, long arg, char **argv)
{
    int fd;
    say("kaiser-guest: %s begins\n", name);
    if (strcmp(name, "getppid") == 0) {
        mark_job(id, 0);
        for (long i = 0; i < calls; i++)
            getppid();
        mark_job(id, 1);
    } else if (strcmp(name, "close") == 0) {
        mark_job(id, 0);
        for (long i = 0; i < calls; i++)
            close(999);
        mark_job(id, 1);
    } else if (strcmp(name, "sched_yield") == 0) {
        mark_job(id, 0);
        for (long i = 0; i < calls; i++)
            sched_yield();
        mark_job(id, 1);
    } else if (strcmp(name, "lseek") == 0 || strcmp(name, "read") == 0) {
        make_file("/data", 4u << 20);
        fd = open("/data", O_RDONLY);
        mark_job(id, 0);
        for (long i = 0; i < calls; i++) {
            if (name[0] == 'l')
                lseek(fd, 0, SEEK_SET);
            else if (read(fd, iobuf, 64) <= 0)
                lseek(fd, 0, SEEK_SET);
        }
        mark_job(id, 1);
        close(fd);
    } else if (strcmp(name, "write") == 0) {
        fd = open("/wdata", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        mark_job(id, 0);
        for (long i = 0; i < calls; i++)
            if (write(fd, iobuf, 64) != 64)
                break;
        mark_job(id, 1);
        close(fd);
        unlink("/wdata");
    } else if (strcmp(name, "pipe") == 0) {
        job_pipe(id, calls);
    } else if (strcmp(name, "page-fault") == 0) {
        job_page_fault(id, calls);
    } else if (strcmp(name, "timer") == 0) {
        job_timer(id, calls, arg);
    } else if (strcmp(name, "s1bench") == 0) {
        job_s1bench(id, calls, arg);
    } else if (strcmp(name, "program") == 0 && argv[0]) {
        job_program(id, argv, arg);
    } else {
        say("kaiser-guest: unknown job %s\n", name);
    }
    info_line("job-done", name);
    say("kaiser-guest: %s done\n", name);
}

static void run_conf(void)
{
    static char line[8192];
    FILE *f = fopen("/kaiser.conf", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *fields[64];
        int n = 0;
        line[strcspn(line, "\n")] = 0;
        for (char *tok = strtok(line, "\t"); tok && n < 63; tok = strtok(NULL, "\t"))
            fields[n++] = tok;
        fields[n] = NULL;
        if (n < 4)
            continue;
        run_job(atoi(fields[0]), fields[1], atol(fields[2]), atol(fields[3]), &fields[4]);
    }
    if (f)
        fclose(f);
}

int main(void)
{
    struct utsname u;
    mkdir("/proc", 0555);
    mount("proc", "/proc", "proc", 0, NULL);
    console = fopen("/dev/console", "w");
    if (ioperm(0xe9, 1, 1) != 0) {
        say("kaiser-guest: ioperm(0xe9) failed: %s\n", strerror(errno));
    } else {
        uname(&u);
        info_line("release", u.release);
        info_file_line("version", "/proc/version");
        info_file_line("cmdline", "/proc/cmdline");
        info_model();
        kcore_open();
        info_kallsyms();
        info_layout();
        info_line("ready", "1");
        run_conf();
        info_line("done", "1");
    }
    say("%s", "kaiser-guest: powering off\n");
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
