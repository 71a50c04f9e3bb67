"""The Open Inference Protocol (KServe v2 REST) on the gateway.

`codec` holds the protocol's tensors on the wire (JSON and Triton's binary tensor data
extension) and writes responses, `parse` reads requests, `contract` says how the served
model looks through the protocol (metadata, which input tensors become images, which
outputs come back), `schemas` documents the bodies, `routes` serves `/v2/...`.
"""
