"""mma: Max-Margin Adversarial (MMA) training, reproducible (Ding et al., arXiv 1812.02637).

Importing the package is cheap; torch is imported by the submodules that need it.
"""

__version__ = "0.1.0"
