"""The results store: Parquet tables partitioned by study (appends, reads with filters), the
rules of a trials row (status, usable, better, ``config.*`` columns), queries and maintenance.
"""
