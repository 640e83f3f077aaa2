"""Real program traces: valgrind lackey memory traces and strace logs, streamed and interleaved
with each system call's kernel-side references, replayed per variant (docs/traces.md)."""
