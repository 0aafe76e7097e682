"""Self-supervised pretraining: contrastive views, losses and steps (notebooks 02-04)."""
