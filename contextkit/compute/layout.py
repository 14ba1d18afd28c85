"""Where each object's data lives in the stores: the table names that materialization and
ingest write and that retrieval reads. One place, so a writer and its readers cannot disagree."""


def online_table(workspace: str, view: str) -> str:
    """The online store table of a feature view (latest values per entity)."""
    return f"{workspace}__{view}"


def offline_table(workspace: str, view: str) -> str:
    """The offline store table of a feature view (its rows over time)."""
    return f"{workspace}/{view}"


def inputs_table(workspace: str, view: str) -> str:
    """Offline table of an aggregate view's input rows (inside the view's folder)."""
    return f"{workspace}/{view}/inputs"


def log_table(workspace: str, source: str) -> str:
    """The online store table that logs a push source's ingested records."""
    return f"{workspace}__{source}__log"


def tiles_table(workspace: str, view: str) -> str:
    """The online store table of a stream view's aggregate tiles."""
    return f"{workspace}__{view}__tiles"


def vector_table(workspace: str, view: str) -> str:
    """The vector store table of an embedding view in a workspace."""
    return f"{workspace}__{view}"
