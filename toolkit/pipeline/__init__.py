"""``run-all``: the stage graph, completion records, executors and the status view."""
