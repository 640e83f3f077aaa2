// SPDX-License-Identifier: GPL-2.0
/*
 * ptcat [-l] FILE...: copy FILEs to stdout, like cat, from a process that (with -l) first gives
 * itself an LDT with modify_ldt(2). /sys/kernel/debug/page_tables/current_{kernel,user} describe
 * the mm of the process reading them, so with -l they show the per-mm LDT remap (PTI maps it into
 * the user tables too). Built static for the initramfs (tools/realdumps/regenerate.sh).
 */
#include <asm/ldt.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int give_me_an_ldt(void)
{
	struct user_desc desc;

	memset(&desc, 0, sizeof(desc));
	desc.entry_number = 0;
	desc.base_addr = 0;
	desc.limit = 0xfffff;
	desc.seg_32bit = 1;
	desc.limit_in_pages = 1;
	desc.useable = 1;
	/* func 0x11: write one entry, new (not "old mode") semantics */
	if (syscall(SYS_modify_ldt, 0x11, &desc, sizeof(desc)) != 0) {
		perror("ptcat: modify_ldt");
		return -1;
	}
	return 0;
}

static int copy(const char *path)
{
	char buf[65536];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0) {
		perror(path);
		return -1;
	}
	/* seq_file hands out a page or so per read: keep reading until EOF */
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		ssize_t off = 0;

		while (off < n) {
			ssize_t w = write(1, buf + off, (size_t)(n - off));

			if (w <= 0)
				return -1;
			off += w;
		}
	}
	close(fd);
	return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	int i = 1, status = 0;

	if (argc > 1 && strcmp(argv[1], "-l") == 0) {
		if (give_me_an_ldt())
			return 1;
		i = 2;
	}
	for (; i < argc; i++)
		if (copy(argv[i]))
			status = 1;
	return status;
}
