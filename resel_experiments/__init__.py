"""Experiments over many runs: sweeps on Ray (``sweep``, ``runner``, ``trials``), the report and the plots
(torch-free: they read run folders only), and the paper's reference numbers."""
