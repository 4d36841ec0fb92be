"""The weight-free one-shot engine: descriptor matching of the support's keypoint constellation (no training)."""
