"""ConnectorX peer run for bench/peers.sh: read a MySQL query into Arrow, print the row count.

    python peers_connectorx.py arrow   URL QUERY           # whole result as one Arrow table in memory
    python peers_connectorx.py parquet URL QUERY OUT.parquet  # streamed batches written to one Parquet file

The last line printed is the number of rows read, for peers.sh to check.
"""
import sys

import connectorx as cx


def main() -> None:
    mode, url, query = sys.argv[1:4]
    if mode == "arrow":
        table = cx.read_sql(url, query, return_type="arrow")
        print(table.num_rows)
    elif mode == "parquet":
        import pyarrow.parquet as pq

        # Streamed, so memory stays at a few batches rather than the whole table.
        reader = cx.read_sql(url, query, return_type="arrow_stream", batch_size=65536)
        rows = 0
        with pq.ParquetWriter(sys.argv[4], reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        print(rows)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
