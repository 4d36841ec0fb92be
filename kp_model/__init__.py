"""kpassist's models, with no Label Studio knowledge.

- ``predictor``: the Predictor protocol every engine implements (set_support once, predict many);
- ``build``: PredictorConfig and ``build_predictor``, the one way to get a predictor from a config or a served version;
- ``oneshot``: the weight-free engine; ``kptllm``: the learned model;
- ``training``: samples, training loop, fine-tuning runs, version store; ``evaluation``: metrics and protocols.
"""
