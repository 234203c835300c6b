"""Beyond one machine, with Ray: distributed ingest (Ray Data) and search (actors).

Nothing here is imported by the local path; ``runtime`` is the one place that imports
Ray, so a missing ``ray`` extra is reported in one line with its install hint.
"""
