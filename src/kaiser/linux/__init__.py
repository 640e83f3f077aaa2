"""Linux's side: layout, init_mm, processes, PTI and its variants, ptdump, audits (docs/architecture.md)."""
