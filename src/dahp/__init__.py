"""dahp: deep hashing image retrieval with DAHP (Li et al., IEEE TCSVT 2022)."""

__version__ = "0.1.0"
