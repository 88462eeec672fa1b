"""The gateway benchmark behind `bench/run` (see bench/README.md).

- `install`: wrk and nginx from Debian, py-spy, LiteLLM in a virtualenv of its own.
- `procs`: processes in their own groups, pinned to a core; CPU and memory from /proc.
- `measure`: a step's CPU, the foreign load on each core, reruns of disturbed steps.
- `servers`: nginx, the fake vLLMs, the bare proxy, llmgw and LiteLLM on loopback.
- `load`: wrk (with `post.lua`) and the Python stream client (`stream_client`).
- `steps`: what is measured and how it becomes table rows (`report`).
- `bare_proxy`, `ledger_bench`, `limiter_bench`, `profile`: run by the steps.
"""
