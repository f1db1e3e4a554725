"""Helpers of the ``tempo`` protocol (:mod:`blindtrain.protocols.tempo`)."""
