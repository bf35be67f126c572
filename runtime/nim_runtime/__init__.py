"""nim-runtime: a NIM-compatible inference server backed by vLLM."""
