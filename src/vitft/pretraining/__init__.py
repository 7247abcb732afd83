"""Pretraining a backbone without labels (MAE, DINO) and on formula-driven images."""
