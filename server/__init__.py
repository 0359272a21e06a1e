"""The vst inference server: request loop, worker, model registry, colour pipeline. Owns torch."""
