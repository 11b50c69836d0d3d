"""The exported model directory: the one contract between models/ (which writes it) and
service/ (which serves it), written down in docs/model-format.md and checked here.

Both sides import this package and nothing of each other. It needs only the standard library,
so the serving install carries it at no cost.
"""
