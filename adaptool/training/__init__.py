"""Training: setup / fit / finish, with batching, checkpoints, metrics, progress and the loss
plot."""
