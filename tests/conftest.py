"""The commands the tests call in this process use torch's thread count as it is (``WINDOWGUIDE_THREADS``),
instead of measuring the idle cores for a quarter of a second on every call."""
import os

import torch

os.environ.setdefault("WINDOWGUIDE_THREADS", str(torch.get_num_threads()))
