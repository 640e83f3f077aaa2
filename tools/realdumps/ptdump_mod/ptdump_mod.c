// SPDX-License-Identifier: GPL-2.0
/*
 * ptdump_mod: the three /sys/kernel/debug/page_tables/ files for a kernel built without
 * CONFIG_PTDUMP_DEBUGFS (Debian's linux-image-amd64 is one).
 *
 * The kernel still contains the x86 page-table dumper (CONFIG_PTDUMP_CORE, for the boot-time
 * W+X check) and exports its debugfs entry point, ptdump_walk_pgd_level_debugfs(seq, mm, user),
 * to GPL modules. All this module does is create the files and call it, so the text in them is
 * the kernel's own:
 *
 *   kernel          the tables of init_mm (the swapper page tables)
 *   current_kernel  the kernel-mode top-level table of the reading process's mm
 *   current_user    the user-mode (PTI shadow) top-level table of that mm; the dumper itself
 *                   falls back to the kernel table when PTI is off at run time
 *
 * init_mm is not exported. Its address comes in as the module parameter init_mm_addr (the init
 * script reads it from /proc/kallsyms). Before using it we check that it is a valid kernel
 * address, that its pgd pointer is one too, and that the last top-level entry (the one mapping
 * the kernel image, copied into every new mm at pgd_alloc time) equals the loading process's, so
 * a wrong address is refused at load time instead of being walked later. Without the parameter,
 * `kernel` is not created.
 *
 * Written for the kaiser project (tools/realdumps); not derived from the kernel's
 * debug_pagetables.c.
 */
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <asm/pgtable.h>

static unsigned long init_mm_addr;
module_param(init_mm_addr, ulong, 0400);
MODULE_PARM_DESC(init_mm_addr, "address of init_mm (from /proc/kallsyms); enables the 'kernel' file");

static struct dentry *pt_dir;
static struct mm_struct *swapper_mm;

static int swapper_show(struct seq_file *seq, void *unused)
{
	if (swapper_mm)
		ptdump_walk_pgd_level_debugfs(seq, swapper_mm, false);
	return 0;
}

static int show_mm(struct seq_file *seq, bool user_half)
{
	struct mm_struct *mm = current->mm;

	/* a kernel thread has no mm of its own: nothing to show */
	if (mm && mm->pgd)
		ptdump_walk_pgd_level_debugfs(seq, mm, user_half);
	return 0;
}

static int current_kernel_show(struct seq_file *seq, void *unused)
{
	return show_mm(seq, false);
}

static int current_user_show(struct seq_file *seq, void *unused)
{
	return show_mm(seq, true);
}

DEFINE_SHOW_ATTRIBUTE(swapper);  /* swapper_fops */
DEFINE_SHOW_ATTRIBUTE(current_kernel);
DEFINE_SHOW_ATTRIBUTE(current_user);

/* Is `addr` plausibly init_mm? (see the header comment) */
static int check_swapper(unsigned long addr)
{
	struct mm_struct *cand = (struct mm_struct *)addr;
	const pgd_t *theirs, *ours;

	if (addr < PAGE_OFFSET || !current->mm) /* kernel-half pointer; we need our mm to compare */
		return -EINVAL;
	if (!virt_addr_valid(cand->pgd)) /* init_mm.pgd is swapper_pg_dir, in the image: has a struct page */
		return -EINVAL;
	theirs = cand->pgd;
	ours = current->mm->pgd;
	if (pgd_val(theirs[PTRS_PER_PGD - 1]) != pgd_val(ours[PTRS_PER_PGD - 1]))
		return -EINVAL;
	return 0;
}

static int __init ptdump_mod_init(void)
{
	int err;

	if (init_mm_addr) {
		/* the mm_struct itself lives in the kernel image (.data): check it is mapped first */
		if (!virt_addr_valid((void *)init_mm_addr)) {
			pr_err("ptdump_mod: init_mm_addr=%#lx is not a valid kernel address\n", init_mm_addr);
			return -EINVAL;
		}
		err = check_swapper(init_mm_addr);
		if (err) {
			pr_err("ptdump_mod: init_mm_addr=%#lx does not look like init_mm\n", init_mm_addr);
			return err;
		}
		swapper_mm = (struct mm_struct *)init_mm_addr;
	}

	pt_dir = debugfs_create_dir("page_tables", NULL);
	if (IS_ERR(pt_dir))
		return PTR_ERR(pt_dir);
	if (swapper_mm)
		debugfs_create_file("kernel", 0400, pt_dir, NULL, &swapper_fops);
	debugfs_create_file("current_kernel", 0400, pt_dir, NULL, &current_kernel_fops);
	debugfs_create_file("current_user", 0400, pt_dir, NULL, &current_user_fops);
	pr_info("ptdump_mod: /sys/kernel/debug/page_tables ready (kernel file: %s)\n",
		swapper_mm ? "yes" : "no");
	return 0;
}

static void __exit ptdump_mod_exit(void)
{
	debugfs_remove_recursive(pt_dir);
}

module_init(ptdump_mod_init);
module_exit(ptdump_mod_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kaiser project");
MODULE_DESCRIPTION("debugfs page_tables files through the exported x86 ptdump walker");
