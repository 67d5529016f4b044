"""Optional C kernels for CPUs, built with the system compiler on first use (build.py), reached by the
network only through ops.py; PyTorch's own ops wherever they don't apply or TINYGPT_KERNELS=0."""
