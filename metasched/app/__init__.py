"""Application services: what one collect cycle, one ranking or one admin action does, over the layers below.

The CLI and serve are thin adapters over these (docs/architecture.md)."""
