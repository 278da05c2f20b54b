"""What measures: backend adapters over vLLM's own classes (``adapters``), the per-layer buffers
(``buffers``), the float reference (``oracle``) and output checks (``verify``), the KV-cache formats
(``kv_cache``), the device timer (``timing``), clocks and hardware facts (``clocks``, ``hardware``), and the
pipeline that runs one case (``runner``; ``recheck`` re-times one in a fresh process). Imports ``spec`` and
``results``."""
