"""Counts the events Vigil wrote, reading the Parquet directory with DuckDB as a user would."""
import sys

import duckdb

data_dir = sys.argv[1]
where = sys.argv[2] if len(sys.argv) > 2 else "true"
con = duckdb.connect()
n = con.execute(
    f"SELECT count(*) FROM read_parquet('{data_dir}/events/**/*.parquet', hive_partitioning = true) WHERE {where}"
).fetchone()[0]
print(n)
