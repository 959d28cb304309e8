#!/usr/bin/env bash
# Re-create every bundled model from its preset (seeded: the same weights on the same machine and
# torch build). Each run resumes if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
W=src/windowguide/weights
for p in digits mirror digits-weak mirror-weak digits-wd mirror-wd scenes; do
  windowguide train --preset "$p" --out "runs/train/$p"
  cp "runs/train/$p/model.safetensors" "$W/$p.safetensors"
done
for d in digits mirror scenes; do
  windowguide train --classifier --dataset "$d" --out "runs/train/$d-classifier"
  cp "runs/train/$d-classifier/model.safetensors" "$W/$d-classifier.safetensors"
done
# the video model of `windowguide bench video` (toy.bounce clips; 4000 steps, about 9 minutes on 2 cores)
python3 -m windowguide.train.video "$W/bounce.safetensors" 4000
python3 -c "from windowguide.train.video import train_video as t; t(\"$W/bounce.safetensors\", 6000, lr=1e-3, init=\"$W/bounce.safetensors\")"
