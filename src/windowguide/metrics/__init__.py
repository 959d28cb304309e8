"""Sample-quality metrics: distribution distances on a feature network, and exact pixel statistics."""
from .distribution import (frechet_distance, gaussian_stats, inception_score, kernel_inception_distance,
                           precision_recall)
from .pixels import asymmetry, clipped_fraction, contrast, saturation

__all__ = ["frechet_distance", "gaussian_stats", "inception_score", "kernel_inception_distance",
           "precision_recall", "asymmetry", "clipped_fraction", "contrast", "saturation"]
