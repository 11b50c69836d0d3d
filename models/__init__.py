"""Model code for Anytime: ordered VQ-VAE, Transformer prior, data, training, evaluation, export."""
