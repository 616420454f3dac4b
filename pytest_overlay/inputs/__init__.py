"""Inputs: the topology (its model, its YAML parser, and the generators that write one) and
the located errors every input gets."""
