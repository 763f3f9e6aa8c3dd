"""The runtime: run a compiled model on the simulated chip, one decode step at a time (`session`), and generate
text with it, with the chip's exact cycles turned into latency and throughput (`generate`)."""
