"""dahp: deep hashing image retrieval with DAHP (Li et al., IEEE TCSVT 2022)."""

import os

# PyTorch's CPU allocator takes every large tensor (a 160-px batch's activations are
# hundreds of MB) fresh from the kernel, 4 KB page by page. Backed by transparent huge
# pages instead, the pretrained recipe's network trained 1.5x and encoded 1.3x as fast on
# the 2-core machine (docs/retrieval-quality.md). PyTorch reads the setting at its first
# allocation, so it must be set before torch is imported; THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
