"""The load generator behind `ca-serve bench`: drives a gateway (or Triton directly) and
reports throughput and latency.

It lives beside the service, not in `clients`: it reuses the gateway's preprocessing and
settings for `--triton`, and the user-facing client library must import nothing from
`service`. Imports go one way: `service.loadgen` -> `clients` and the service's modules.

- `bench`: the command, the workers (`LoadRun`) and the gateway target.
- `http_client`: a lean HTTP/1.1 client (pre-encoded requests, keep-alive sockets).
- `triton`: the `--triton` target (preprocessed batches straight to Triton).
- `stats`: samples and their summary; `plot`: the `--plot` PNG.
"""
