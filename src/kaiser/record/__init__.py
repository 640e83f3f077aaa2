"""Recording a real Linux kernel's own memory references under QEMU (TCG plugin), and the
recording format: docs/recording.md."""
