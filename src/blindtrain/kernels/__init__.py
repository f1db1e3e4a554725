"""The enclave's reusable kernels, for any protocol: the one-read gather / scale pass with check statistics
(:mod:`.gather`, C in ``gather.c`` built by :mod:`.native`, PyTorch fallback), thin products against a few
check vectors (:mod:`.thin`) and a weight matrix's key epoch in one read (:mod:`.weight_epoch`)."""
