"""The experiments' protocols, one ``get_config(variant)`` module per experiment."""
