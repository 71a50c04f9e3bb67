"""The Open Inference Protocol (KServe v2 REST) on the gateway.

`codec` reads and writes the protocol's tensors (JSON and Triton's binary tensor data
extension), `contract` says how the served model looks through the protocol (metadata,
which input tensors become images, which outputs come back), `routes` serves `/v2/...`.
"""
