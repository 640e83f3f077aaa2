"""kaiser: kernel page-table isolation (KAISER/KPTI) on a bit-exact x86-64 paging model."""
