"""The API under the CLI: what a command asks for, in a few calls (docs/architecture.md).

`process.py` boots a kernel with the process that reads debugfs; `tables.py` the debugfs table
views of it (Linux's text, the wide view, the trees); `exposure.py` what user mode's tables hold
of the kernel (the demo's and docs/variants.md's figures); `syscalls.py` the system calls the
model prices and the Linux names traces map onto them. The CLI parses, calls these and prints.
"""
