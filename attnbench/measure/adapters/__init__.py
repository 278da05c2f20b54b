"""Backend adapters: one module per kind of kernel (reference, vLLM attention, vLLM MLA)."""
