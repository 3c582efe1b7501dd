"""The RQ worker: runs the engine on jobs the API enqueues (see worker.tasks).

Importing this package is cheap; torch and the engine load with worker.tasks.
"""
