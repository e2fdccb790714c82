"""Persistence of a run folder: atomic writes, checksummed checkpoints (the checkpoint + replay unit), the
one-writer run lock, and the crash seam the crash-safety tests hook into."""
