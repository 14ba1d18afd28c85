"""Storage backends: registry (SQLite), online store (SQLite), offline store (Parquet).

A leaf layer: nothing here imports the contextkit core. Each store exposes a small interface
(see ``registry.RegistryStore``, ``online.OnlineStore``) so scale-out backends can follow.
"""
