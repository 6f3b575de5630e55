"""The pure core: ``step``/``tick``, the alert lifecycle, patient state, policy and one module per
rule (docs/architecture.md). Nothing here imports Kafka, Faust, a clock or the network."""
