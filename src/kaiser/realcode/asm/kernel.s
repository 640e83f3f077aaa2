# kaiser realcode: a small x86-64 kernel whose entry and exit paths switch CR3 the way a PTI
# variant does. GNU as, AT&T syntax, as in arch/x86/entry/.
#
# Assembled with --defsym for the build switches (PTI, PCID, TRAMPOLINE) and the constants of
# kaiser/realcode/build.py (selectors, MSRs, per-CPU offsets); linked by a generated linker script
# that places each section at the address the booted kernel model maps it at and defines the
# layout's addresses (KASLR bases, this CPU's entry area, the task's stack).
#
# Sections and where the loader puts them:
#   .entry.page  first page of entry text. TRAMPOLINE=0: linked at __entry_text_start (the user
#                tables map it through the entry-text clone). TRAMPOLINE=1: linked at this CPU's
#                entry-area trampoline page, which aliases the same frame (4.15's
#                SYSCALL64_entry_trampoline; our fixed-trampoline).
#                Everything that runs with the *user* CR3 is here: the entry up to the CR3 switch
#                and the exits from the CR3 switch on.
#   .entry.text  second page of entry text: the rest of entry/exit, kernel CR3 only.
#   .ktext       first page of the kernel's .text: boot (syscall_init) and the system calls.
#   .kdata       second page of the kernel's .data: the system call table and kernel words.

# ---- arch/x86/entry/calling.h: the PTI CR3 switches -----------------------------------------

	.set PTI_USER_PGTABLE_MASK, 1 << 12		# PTI_USER_PGTABLE_BIT = PAGE_SHIFT
	.set PTI_USER_PCID_MASK, 1 << 11		# X86_CR3_PTI_PCID_USER_BIT
	.set PTI_USER_PGTABLE_AND_PCID_MASK, PTI_USER_PGTABLE_MASK | PTI_USER_PCID_MASK
	.set X86_CR3_PCID_NOFLUSH_BIT, 63
	.set CR3_ASID_MASK, 0x7ff

# Every CR3 write gets a global symbol (cr3_write_N) so the harness can trace the value written.
.macro WRITE_CR3 reg:req
	.globl cr3_write_\@
cr3_write_\@:
	movq	\reg, %cr3
.endm

# SWITCH_TO_KERNEL_CR3: with PCID set NOFLUSH, then clear the user PCID bit and the user-PGD bit.
.macro SWITCH_TO_KERNEL_CR3 scratch_reg:req
.if PTI
	movq	%cr3, \scratch_reg
.if PCID
	btsq	$X86_CR3_PCID_NOFLUSH_BIT, \scratch_reg
.endif
	andq	$(~PTI_USER_PGTABLE_AND_PCID_MASK), \scratch_reg
	WRITE_CR3 \scratch_reg
.endif
.endm

# SWITCH_TO_USER_CR3_NOSTACK: without PCID just set the user-PGD bit. With PCID, flush the user
# ASID if this CPU's user_pcid_flush_mask asks for it (clearing the request), else set NOFLUSH;
# then set the user PCID bit and the user-PGD bit.
.macro SWITCH_TO_USER_CR3_NOSTACK scratch_reg:req scratch_reg2:req
.if PTI
	movq	%cr3, \scratch_reg
.if PCID
	movq	\scratch_reg, \scratch_reg2
	andq	$CR3_ASID_MASK, \scratch_reg
	btq	\scratch_reg, %gs:PCPU_USER_PCID_FLUSH_MASK
	jnc	.Lnoflush_\@
	btrq	\scratch_reg, %gs:PCPU_USER_PCID_FLUSH_MASK
	movq	\scratch_reg2, \scratch_reg
	jmp	.Lwrcr3_pcid_\@
.Lnoflush_\@:
	movq	\scratch_reg2, \scratch_reg
	btsq	$X86_CR3_PCID_NOFLUSH_BIT, \scratch_reg
.Lwrcr3_pcid_\@:
	orq	$PTI_USER_PCID_MASK, \scratch_reg
.endif
	orq	$PTI_USER_PGTABLE_MASK, \scratch_reg
	WRITE_CR3 \scratch_reg
.endif
.endm

.macro SWITCH_TO_USER_CR3_STACK scratch_reg:req
	pushq	%rax
	SWITCH_TO_USER_CR3_NOSTACK scratch_reg=\scratch_reg scratch_reg2=%rax
	popq	%rax
.endm

# ---- the user-mapped page: SYSCALL entry and the last steps of both exits ------------------------

	.section .entry.page, "ax"
	.globl entry_SYSCALL_64
entry_SYSCALL_64:				# MSR_LSTAR: the first instruction fetched after SYSCALL
	swapgs
.if TRAMPOLINE
	# 4.15 entry_SYSCALL_64_trampoline: stash the user RSP in this CPU's entry stack (entry area),
	# switch CR3, take the task stack's top from TSS.sp1 through the entry area's TSS alias.
	movq	%rsp, RSP_SCRATCH(%rip)
	SWITCH_TO_KERNEL_CR3 scratch_reg=%rsp
	movq	CEA_TSS_SP1(%rip), %rsp
	pushq	$USER_DS			# pt_regs->ss
	pushq	RSP_SCRATCH(%rip)		# pt_regs->sp
.else
	# 4.20+ entry_SYSCALL_64: stash the user RSP in cpu_tss_rw.sp2 (a page the user tables map),
	# switch CR3, load cpu_current_top_of_stack.
	movq	%rsp, %gs:TSS_SP2
	SWITCH_TO_KERNEL_CR3 scratch_reg=%rsp
	movq	%gs:PCPU_TOP_OF_STACK, %rsp
	pushq	$USER_DS			# pt_regs->ss
	pushq	%gs:TSS_SP2			# pt_regs->sp
.endif
	pushq	%r11				# pt_regs->flags
	pushq	$USER_CS			# pt_regs->cs
	pushq	%rcx				# pt_regs->ip
	pushq	%rdi
	movabsq	$entry_SYSCALL_64_stage2, %rdi	# into entry text proper (JMP_NOSPEC %rdi)
	jmp	*%rdi

	# On the entry (trampoline) stack: user RDI, user RSP. RCX/R11 hold the user RIP/RFLAGS.
	.globl syscall_return_via_sysret_tail
syscall_return_via_sysret_tail:
	SWITCH_TO_USER_CR3_STACK scratch_reg=%rdi
	popq	%rdi
	popq	%rsp
	swapgs
	.globl syscall_sysretq
syscall_sysretq:
	sysretq

	# On the entry stack: user RDI, then the IRET frame.
	.globl iret_to_user_tail
iret_to_user_tail:
	SWITCH_TO_USER_CR3_STACK scratch_reg=%rdi
	popq	%rdi
	swapgs
	.globl native_iretq
native_iretq:
	iretq

	# Not kernel code: the harness's probe, run at CPL 0 with the CR3 that was live when the user's
	# kernel load faulted. It asks the real MMU whether that CR3's tables translate the address at
	# all (a supervisor load succeeds) -- what a Meltdown-style transient load would need.
	.globl kaiser_probe
kaiser_probe:
	movq	(%rsi), %rax
	.globl kaiser_probe_done
kaiser_probe_done:
	int3

# ---- entry text proper: kernel CR3 only --------------------------------------------------------

	.section .entry.text, "ax"
	.globl entry_SYSCALL_64_stage2
entry_SYSCALL_64_stage2:
	popq	%rdi
	pushq	%rax				# pt_regs->orig_ax
	pushq	%rdi
	pushq	%rsi
	pushq	%rdx
	cmpq	$NR_SYSCALLS, %rax		# do_syscall_64()
	jae	1f
	call	*sys_call_table(, %rax, 8)
	jmp	2f
1:	movq	$-38, %rax			# -ENOSYS
2:	popq	%rdx
	popq	%rsi
	# Stack: rdi, orig_ax, ip, cs, flags, sp, ss. Exit through SYSRET as entry_64.S does:
	movq	16(%rsp), %rcx			# user RIP
	movq	32(%rsp), %r11			# user RFLAGS
	movq	%rsp, %rdi
	movq	%gs:TSS_SP0, %rsp		# the trampoline stack: top of the entry stack
	pushq	40(%rdi)			# user RSP
	pushq	(%rdi)				# user RDI
	movabsq	$syscall_return_via_sysret_tail, %rdi
	jmp	*%rdi

	# swapgs_restore_regs_and_return_to_usermode: RSP points at an IRET frame on the task stack.
	.globl ret_to_user_iret
ret_to_user_iret:
	movq	%rsp, %rdi
	movq	%gs:TSS_SP0, %rsp
	pushq	32(%rdi)			# ss
	pushq	24(%rdi)			# rsp
	pushq	16(%rdi)			# rflags
	pushq	8(%rdi)				# cs
	pushq	(%rdi)				# rip
	pushq	$0				# user RDI
	movabsq	$iret_to_user_tail, %rdi
	jmp	*%rdi

# ---- kernel text: boot and the system calls ----------------------------------------------------

	.section .ktext, "ax"
	.globl kaiser_start_kernel
kaiser_start_kernel:				# CPL 0, kernel CR3, RSP = top of the task stack
	lgdt	gdt_descr(%rip)			# the GDT at this CPU's entry area (load_fixmap_gdt)
	pushq	$KERNEL_CS
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	movl	$KERNEL_DS, %eax
	movl	%eax, %ss
	# syscall_init(): STAR, LSTAR, SFMASK, EFER.SCE; per-CPU GS.
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$1, %eax			# EFER.SCE
	wrmsr
	movl	$MSR_STAR, %ecx
	xorl	%eax, %eax
	movl	$((USER32_CS << 16) | KERNEL_CS), %edx
	wrmsr
	movl	$MSR_LSTAR, %ecx
	movabsq	$entry_SYSCALL_64, %rax
	movq	%rax, %rdx
	shrq	$32, %rdx
	wrmsr
	movl	$MSR_SYSCALL_MASK, %ecx
	movl	$SYSCALL_MASK, %eax
	xorl	%edx, %edx
	wrmsr
	movl	$MSR_GS_BASE, %ecx
	movabsq	$PERCPU_BASE, %rax
	movq	%rax, %rdx
	shrq	$32, %rdx
	wrmsr
	movl	$MSR_KERNEL_GS_BASE, %ecx
	xorl	%eax, %eax
	xorl	%edx, %edx
	wrmsr
	.globl kaiser_cpl0_ready
kaiser_cpl0_ready:				# CS/SS as SYSCALL loads them (STAR[47:32], +8)
	pushq	$USER_DS			# start_thread(): the first return to user mode
	movabsq	$USER_STACK_TOP, %rax
	pushq	%rax
	pushq	$0x202				# RFLAGS: IF
	pushq	$USER_CS
	movabsq	$_user_start, %rax
	pushq	%rax
	jmp	ret_to_user_iret

sys_getpid:					# current->tgid, from this CPU's data (direct map)
	movq	%gs:PCPU_CURRENT_PID, %rax
	ret

sys_kernel_word:				# a word of the kernel image's .data
	cmpq	$KDATA_WORDS, %rdi
	jae	1f
	movq	kaiser_kdata(, %rdi, 8), %rax
	ret
1:	movq	$-22, %rax			# -EINVAL
	ret

sys_peek_phys:					# a word through the direct map (page_offset_base + pa)
	movabsq	$PAGE_OFFSET, %rax
	movq	(%rax, %rdi), %rax
	ret

# ---- kernel data ---------------------------------------------------------------------------------

	.section .kdata, "aw"
	.balign 8
	.globl sys_call_table
sys_call_table:
	.quad	sys_getpid			# 0
	.quad	sys_kernel_word			# 1
	.quad	sys_peek_phys			# 2
	.set NR_SYSCALLS, (. - sys_call_table) / 8
	.balign 8
gdt_descr:
	.word	GDT_LIMIT
	.quad	CPU_GDT
	.balign 8
	.globl kaiser_kdata
kaiser_kdata:					# filled by the loader
	.fill	KDATA_WORDS, 8, 0
