"""Workbench: train generative models on medical images and find synthetic images that copy
training patients (pixel-correlation search after Akbar, Wang & Eklund 2023).

Layers (see DESIGN.md): ``workbench.data`` -> ``workbench.search`` / ``models`` / ``train`` /
``sample`` -> ``workbench.memorization`` -> ``workbench.widgets`` -> ``workbench.runs`` / ``cli``.
"""
__version__ = "0.1.0"
