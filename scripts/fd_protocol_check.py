"""FD of unguided samples and of held-out real images, at the same count, under the old feature networks
(trained on the reference images) and the new ones (trained on a 'features' split): the memorisation check
of docs/algorithms.md §6. Usage: python scripts/fd_protocol_check.py OLD_CLASSIFIER_DIR [N]"""
import sys

import torch

from windowguide import metrics
from windowguide.commands.common import labels_for, prepare
from windowguide.data import load
from windowguide.generate import sample
from windowguide.metrics.features import Evaluator
from windowguide.models.checkpoint import load_model

old_dir, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
for dataset in ("digits", "mirror", "scenes"):
    d, net, info, g = prepare(dataset, "none")
    seeds = list(range(n))
    with torch.no_grad():
        x = sample(d, tuple(info["shape"]), seeds, steps=16, cond=labels_for(seeds, net.num_classes, "all"))
    new = Evaluator(dataset, n)
    old_net, _ = load_model(f"{old_dir}/{dataset}-classifier.safetensors", "classifier")
    with torch.no_grad():
        ref = old_net.features(load(dataset, "train").images)
        stats = metrics.gaussian_stats(ref)
        fd_old = lambda im: metrics.frechet_distance(stats, metrics.gaussian_stats(old_net.features(im.clamp(-1, 1))))
        old_samples, old_real = fd_old(x), fd_old(load(dataset, "test").images[:n])
    print(f"{dataset:7s} n={n}  old protocol: samples {old_samples:.3f}  held-out real {old_real:.3f}   |   "
          f"new protocol: samples {new(x)['fd']:.3f}  real floor {new.floor()['fd']:.3f}", flush=True)
