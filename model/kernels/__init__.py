"""Optional C kernels for CPUs, built with the system compiler on first use (build.py): each one behind
the PyTorch op it stands in for (ops.py), torch.nn modules that run on them (modules.py), and a C
decoding engine (decode.py). Nothing here imports the network (model/nn); model/fused.py applies the
kernels to it. PyTorch's own ops wherever they don't apply or TINYGPT_KERNELS=0."""
