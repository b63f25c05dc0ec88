import os

import torch

# Triton kernels run in the interpreter on CPU tensors unless a real GPU is present. The kernel module
# reads this at import time, and dispatch imports it lazily, so setting it here is early enough;
# backend="auto" never picks the interpreter, so other tests are unaffected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
