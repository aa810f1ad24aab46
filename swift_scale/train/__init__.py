"""Training with accelerate: model factory (timm names + swift_cnn), the loop, evaluation, features pass."""
