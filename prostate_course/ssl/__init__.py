"""Self-supervised pretraining of the course's ResNet-18 encoder (notebooks 02-04)."""
