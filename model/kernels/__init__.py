"""Optional C kernels for CPUs: built with the system compiler on first use; PyTorch is the fallback."""
