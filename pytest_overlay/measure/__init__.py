"""Measurement: the probes (check, run, parse), the paths that run them (point to point,
streaming, faults, load), which samples count (validity), and what the machine and its
neighbours did meanwhile (machine, noise)."""
