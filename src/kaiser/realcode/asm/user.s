# kaiser realcode: the user program (CPL 3). It makes the system calls listed in `calls`
# (records of nr, argument, expected result, result; filled in by the loader), counts the
# results that match, then loads from a kernel address, which must fault under isolation.

	.section .user.text, "ax"
	.globl _user_start
_user_start:
	leaq	calls(%rip), %rbx
	movq	ncalls(%rip), %r13
	xorl	%r12d, %r12d			# calls whose result matched
	xorl	%r14d, %r14d			# index
.Lnext:
	cmpq	%r13, %r14
	jae	.Ldone
	movq	%r14, %r15
	shlq	$5, %r15			# 32-byte records
	movq	0(%rbx, %r15), %rax		# nr
	movq	8(%rbx, %r15), %rdi		# argument
	.globl user_syscall
user_syscall:
	syscall
	movq	%rax, 24(%rbx, %r15)		# result
	cmpq	16(%rbx, %r15), %rax		# expected
	jne	1f
	incq	%r12
1:	incq	%r14
	jmp	.Lnext
.Ldone:
	movq	%r12, passed(%rip)
	movq	kernel_target(%rip), %rsi
	.globl user_kernel_read
user_kernel_read:
	movq	(%rsi), %rax			# a kernel address: #PF under isolation
	movq	%rax, leaked(%rip)
	.globl user_done
user_done:
	int3

	.section .user.data, "aw"
	.balign 8
	.globl ncalls, passed, kernel_target, leaked, calls
ncalls:		.quad 0
passed:		.quad 0
kernel_target:	.quad 0
leaked:		.quad 0
calls:		.fill 4 * MAX_CALLS, 8, 0
