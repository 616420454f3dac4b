"""The link emulator: netem where the kernel has it, else the NFQUEUE delay line (its
netlink codec, its control protocol, and its C core)."""
