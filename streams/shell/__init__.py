"""The Faust shell: the only package that imports Faust (docs/architecture.md)."""
