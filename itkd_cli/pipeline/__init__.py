"""Multi-stage jobs (compress, demo): train + evaluate + export wired together. Imported only by cli."""
