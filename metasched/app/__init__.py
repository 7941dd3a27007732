"""Application services: each one use case wired from the layers below (schedulers, store, metrics,
policy, transport), called by the CLI and serve."""
