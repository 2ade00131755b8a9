"""Metrics: Fréchet distance (``frechet``), the digits judge and FD_judge (``judge``), sliced
Wasserstein for point clouds (``sliced_wasserstein``) and torchmetrics FID/KID/IS with local-only
feature networks (``fid``). Import the submodules directly; this package imports nothing heavy.
"""
