"""The report of a sweep: an HTML page and PNG plots, read from the store.
"""
