"""segstream's benchmark harness: `python -m benchmarks.run` runs every benchmark.

Modules: `common` (machine facts, Redis, histories, medians), `naive` (the naive baseline
engine), `engine` (replay throughput, memory, cost growth), `e2e` (worker throughput and
latency through a Kafka-protocol broker), `training` (`segstream train` wall time),
`report` (results.md and results.json), `run` (the command).
"""
