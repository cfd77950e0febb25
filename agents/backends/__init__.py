"""Generation and scoring backends: `hf` (transformers, CPU or GPU) here; `vllm` (GPU only) behind its own module."""
