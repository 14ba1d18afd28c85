"""The pipeline and the vector store reserve the same column names.

Both are leaves (neither may import the other), so each spells the tuple; this test is what keeps
the two spellings equal. A column added to one and not the other would let a metadata column
shadow a system column on write, or hide a real metadata column from filters.
"""

from contextkit.embeddings.pipeline import SYSTEM_COLUMNS as PIPELINE_COLUMNS
from contextkit.stores.vector import SYSTEM_COLUMNS as STORE_COLUMNS


def test_pipeline_and_store_reserve_the_same_columns():
    assert PIPELINE_COLUMNS == STORE_COLUMNS
    assert len(set(STORE_COLUMNS)) == len(STORE_COLUMNS)
