"""Generative Image Dynamics (Li, Tucker, Snavely & Holynski, CVPR 2024): spectral volumes from one still."""
