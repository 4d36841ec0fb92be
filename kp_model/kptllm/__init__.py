"""The learned KptLLM-style model: configuration, modeling, tokenization, checkpoint, predictor."""
