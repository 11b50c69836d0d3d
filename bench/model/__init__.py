"""Checks of a trained model rather than of the server: the steps of the Makefile's model
pipelines (`make zoo-v2`, `make zoo-v3`, `make zoo-audio`, `make bench-audio`) that merge evaluations, compare one
against its targets, and ask a real server whether its samples are what was asked for."""
